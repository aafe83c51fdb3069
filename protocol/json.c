/* JSON input the way QEMU 7.2's QMP monitor reads it.
 *
 * Three stages, mirroring QEMU's design so that every observable effect
 * (which inputs are errors, the error texts, how many error replies one bad
 * input produces, where the stream resynchronises) matches:
 *
 *   lexer    a byte-driven state machine (table below) that cuts the input
 *            into tokens; strings are only delimited here, decoding and
 *            UTF-8 validation happen in the parser;
 *   framer   counts braces/brackets, stores the tokens of the message in
 *            progress and hands them to the parser once nesting is back to
 *            0 (or went negative); enforces the per-message limits;
 *   parser   turns the stored token sequence into a jansson value, keeping
 *            only the first error, like QEMU.
 *
 * Memory: the tokens of one message are kept in a single buffer as
 * NUL-terminated texts (the token type is recovered from its first byte),
 * so a message costs its token bytes plus one byte per token and the limit
 * is enforced on exactly that; nothing else grows with the input.
 *
 * Strings are stored the way QEMU stores them, in "modified UTF-8": U+0000
 * becomes the two bytes C0 80, so every string stays a C string. jansson's
 * validating constructors refuse that, hence the *_nocheck calls; the
 * encoder at the end of this file prints C0 80 back as \u0000.
 */
#include "protocol/json.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* QEMU's per-message token byte limit; used by qmp_json_parse(). */
#define JSON_QEMU_MAX_BYTES (64u << 20)

/* ---- lexer table --------------------------------------------------------
 *
 * Entries are either a next state (< T_FIRST), a token that ends here
 * (>= T_FIRST), or 0 = error. LOOKAHEAD marks transitions that do not eat
 * the byte: it is looked at again from the new state.
 */
enum lex_state {
    L_ERROR = 0, /* must be 0: unlisted table entries are errors */
    L_RECOVER,   /* after an error: skip to a likely resync point */
    L_DQ,        /* inside "..." */
    L_DQ_ESC,    /* after a backslash inside "..." */
    L_SQ,        /* inside '...' */
    L_SQ_ESC,
    L_ZERO,     /* "0" or "-0" */
    L_MINUS,    /* "-" */
    L_INT,      /* nonzero integer digits */
    L_DOT,      /* "1." needs a digit */
    L_FRAC,     /* "1.5" */
    L_EXP_E,    /* "1e" */
    L_EXP_SIGN, /* "1e+" */
    L_EXP,      /* "1e5" */
    L_WORD,     /* [a-z]+, checked by the parser */
    L_START,
    L_NSTATES,
};

enum lex_token {
    T_FIRST = 32,
    T_LCURLY = T_FIRST,
    T_RCURLY,
    T_LSQUARE,
    T_RSQUARE,
    T_COLON,
    T_COMMA,
    T_INTEGER,
    T_FLOAT,
    T_WORD,
    T_STRING,
};

#define LOOKAHEAD 0x80
/* Any byte ends the token without being eaten, unless listed after this. */
#define ENDS_WITH(tok) [0 ... 0xFF] = (tok) | LOOKAHEAD

/* Rows start with a default and override single entries. */
#pragma GCC diagnostic push
#ifdef __clang__
#pragma GCC diagnostic ignored "-Winitializer-overrides"
#else
#pragma GCC diagnostic ignored "-Woverride-init"
#endif
static const uint8_t lex_table[L_NSTATES][256] = {
    /* Bytes that may start something new end the skipping: structural
     * characters, control characters other than tab (clients send a
     * newline or 0xFF to force a reset) and the bytes never valid in
     * UTF-8. Everything else, including quotes, is skipped. */
    [L_RECOVER] =
        {
            [0 ... 0x1F] = L_START | LOOKAHEAD,
            [0x20 ... 0xFD] = L_RECOVER,
            [0xFE ... 0xFF] = L_START | LOOKAHEAD,
            ['\t'] = L_RECOVER,
            ['{'] = L_START | LOOKAHEAD,
            ['}'] = L_START | LOOKAHEAD,
            ['['] = L_START | LOOKAHEAD,
            [']'] = L_START | LOOKAHEAD,
            [':'] = L_START | LOOKAHEAD,
            [','] = L_START | LOOKAHEAD,
        },
    /* Raw control characters and 0xFE/0xFF end a string with an error;
     * any other byte, including after a backslash, is accepted here and
     * judged by the parser. */
    [L_DQ] =
        {
            [0x20 ... 0xFD] = L_DQ,
            ['\\'] = L_DQ_ESC,
            ['"'] = T_STRING,
        },
    [L_DQ_ESC] = {[0x20 ... 0xFD] = L_DQ},
    [L_SQ] =
        {
            [0x20 ... 0xFD] = L_SQ,
            ['\\'] = L_SQ_ESC,
            ['\''] = T_STRING,
        },
    [L_SQ_ESC] = {[0x20 ... 0xFD] = L_SQ},
    /* A leading zero may not be followed by more digits ("01" is an
     * error, not two tokens). QEMU also takes no exponent right after a
     * lone zero: "0e5" is the integer 0 followed by the word "e". */
    [L_ZERO] =
        {
            ENDS_WITH(T_INTEGER),
            ['0' ... '9'] = L_ERROR,
            ['.'] = L_DOT,
        },
    [L_MINUS] =
        {
            ['0'] = L_ZERO,
            ['1' ... '9'] = L_INT,
        },
    [L_INT] =
        {
            ENDS_WITH(T_INTEGER),
            ['0' ... '9'] = L_INT,
            ['.'] = L_DOT,
            ['e'] = L_EXP_E,
            ['E'] = L_EXP_E,
        },
    [L_DOT] = {['0' ... '9'] = L_FRAC},
    [L_FRAC] =
        {
            ENDS_WITH(T_FLOAT),
            ['0' ... '9'] = L_FRAC,
            ['e'] = L_EXP_E,
            ['E'] = L_EXP_E,
        },
    [L_EXP_E] =
        {
            ['+'] = L_EXP_SIGN,
            ['-'] = L_EXP_SIGN,
            ['0' ... '9'] = L_EXP,
        },
    [L_EXP_SIGN] = {['0' ... '9'] = L_EXP},
    [L_EXP] =
        {
            ENDS_WITH(T_FLOAT),
            ['0' ... '9'] = L_EXP,
        },
    [L_WORD] =
        {
            ENDS_WITH(T_WORD),
            ['a' ... 'z'] = L_WORD,
        },
    [L_START] =
        {
            [' '] = L_START,
            ['\t'] = L_START,
            ['\r'] = L_START,
            ['\n'] = L_START,
            ['"'] = L_DQ,
            ['\''] = L_SQ,
            ['0'] = L_ZERO,
            ['1' ... '9'] = L_INT,
            ['-'] = L_MINUS,
            ['a' ... 'z'] = L_WORD,
            ['{'] = T_LCURLY,
            ['}'] = T_RCURLY,
            ['['] = T_LSQUARE,
            [']'] = T_RSQUARE,
            [':'] = T_COLON,
            [','] = T_COMMA,
        },
};
#pragma GCC diagnostic pop

/* ---- plain runs ---------------------------------------------------------- */

/* Length of the run at p of printable ASCII other than both quotes and the
 * backslash: what every string path (lexer, parser, encoder) passes through
 * unchanged. 16 bytes at a time with SSE2 (every x86-64 has it), else 8 at
 * a time: a word is plain when none of its bytes is below 0x20, has the top
 * bit, or equals one of the four excluded values (the classic "has a zero
 * byte" test on v ^ c). */
static size_t plain_run(const unsigned char *p, size_t n)
{
    size_t i = 0;

#ifdef __SSE2__
    const __m128i below = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7F);
    const __m128i dq = _mm_set1_epi8('"'), sq = _mm_set1_epi8('\'');
    const __m128i bs = _mm_set1_epi8('\\');

    for (; i + 16 <= n; i += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        /* signed: bytes from 0x80 up are negative, so below 0x20 too */
        __m128i bad =
            _mm_or_si128(_mm_cmplt_epi8(x, below), _mm_cmpeq_epi8(x, del));
        unsigned mask;

        bad = _mm_or_si128(
            bad, _mm_or_si128(_mm_cmpeq_epi8(x, dq), _mm_cmpeq_epi8(x, sq)));
        bad = _mm_or_si128(bad, _mm_cmpeq_epi8(x, bs));
        mask = (unsigned)_mm_movemask_epi8(bad);
        if (mask) {
            return i + (size_t)__builtin_ctz(mask);
        }
    }
#else
    const uint64_t ones = 0x0101010101010101ULL, highs = ones * 0x80;

#define HAS_ZERO(x) (((x)-ones) & ~(x)&highs)
    for (; i + 8 <= n; i += 8) {
        uint64_t v;

        memcpy(&v, p + i, 8);
        if ((((v - ones * 0x20) & ~v & highs) | (v & highs) |
             HAS_ZERO(v ^ (ones * '"')) | HAS_ZERO(v ^ (ones * '\'')) |
             HAS_ZERO(v ^ (ones * '\\')) | HAS_ZERO(v ^ (ones * 0x7F))) != 0) {
            break;
        }
    }
#undef HAS_ZERO
#endif
    while (i < n && p[i] >= 0x20 && p[i] < 0x7F && p[i] != '"' &&
           p[i] != '\'' && p[i] != '\\') {
        i++;
    }
    return i;
}

/* ---- modified UTF-8 ----------------------------------------------------- */

/* Decodes one character of modified UTF-8 from s (n bytes available) the
 * way QEMU does: returns the code point and sets *used, or returns -1 for
 * an invalid sequence with *used = the bytes that belong to the bad
 * sequence (at least 1). Overlong forms are refused except C0 80 (= U+0000);
 * surrogates, noncharacters and values above U+10FFFF are refused. */
static int utf8_decode(const unsigned char *s, size_t n, size_t *used)
{
    static const int min_cp[] = {0x80, 0x800, 0x10000, 0x200000, 0x4000000};
    unsigned lead = s[0], len = 0, mask;
    size_t i;
    int cp;

    *used = 1;
    if (lead < 0x80) {
        return (int)lead;
    }
    if (lead >= 0xFE || !(lead & 0x40)) {
        return -1; /* impossible byte or stray continuation byte */
    }
    for (mask = 0x80; lead & mask; mask >>= 1) {
        len++;
    }
    cp = (int)(lead & (mask - 1));
    for (i = 1; i < len; i++) {
        unsigned c = i < n ? s[i] : 0;

        if ((c & 0xC0) != 0x80) {
            *used = i;
            return -1;
        }
        cp = (cp << 6) | (int)(c & 0x3F);
    }
    *used = len;
    if (cp > 0x10FFFF || (cp >= 0xFDD0 && cp <= 0xFDEF) ||
        (cp & 0xFFFE) == 0xFFFE || (cp >= 0xD800 && cp <= 0xDFFF) ||
        (cp < min_cp[len - 2] && !(cp == 0 && len == 2))) {
        return -1;
    }
    return cp;
}

static bool codepoint_ok(long cp)
{
    return cp >= 0 && cp <= 0x10FFFF && !(cp >= 0xFDD0 && cp <= 0xFDEF) &&
           (cp & 0xFFFE) != 0xFFFE && !(cp >= 0xD800 && cp <= 0xDFFF);
}

/* Modified UTF-8 encoding (U+0000 as C0 80); returns the length. */
static size_t utf8_encode(char *out, long cp)
{
    if (cp > 0 && cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- growable byte buffer ----------------------------------------------- */

struct bytes {
    char *p;
    size_t len, cap;
};

static int bytes_reserve(struct bytes *b, size_t extra)
{
    size_t cap = b->cap ? b->cap : 64;
    char *p;

    if (b->len + extra <= b->cap) {
        return 0;
    }
    while (cap < b->len + extra) {
        cap *= 2;
    }
    p = realloc(b->p, cap);
    if (!p) {
        return -ENOMEM;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int bytes_add(struct bytes *b, const void *data, size_t n)
{
    if (bytes_reserve(b, n + 1) < 0) {
        return -ENOMEM;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* ---- parser ------------------------------------------------------------- */

struct parser {
    const char *pos, *end; /* stored tokens: NUL-terminated texts */
    bool failed;
    char msg[1100];
    struct bytes scratch; /* string decoding */
};

/* Only the first error of a message is reported, like QEMU. The text after
 * the prefix is cut at 1023 bytes as QEMU does. */
__attribute__((format(printf, 2, 3))) static void
parse_error(struct parser *p, const char *fmt, ...)
{
    char text[1024];
    va_list ap;

    if (p->failed) {
        return;
    }
    p->failed = true;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    snprintf(p->msg, sizeof(p->msg), "JSON parse error, %s", text);
}

static const char *peek_token(const struct parser *p)
{
    return p->pos < p->end ? p->pos : NULL;
}

static const char *pop_token(struct parser *p)
{
    const char *tok = peek_token(p);

    if (tok) {
        p->pos += strlen(tok) + 1;
    }
    return tok;
}

/* The type of a stored token, from its text. */
static int token_type(const char *tok)
{
    switch (tok[0]) {
    case '{':
        return T_LCURLY;
    case '}':
        return T_RCURLY;
    case '[':
        return T_LSQUARE;
    case ']':
        return T_RSQUARE;
    case ':':
        return T_COLON;
    case ',':
        return T_COMMA;
    case '"':
    case '\'':
        return T_STRING;
    case '-':
    case '0' ... '9':
        return strpbrk(tok, ".eE") ? T_FLOAT : T_INTEGER;
    default:
        return T_WORD;
    }
}

static int hex4(const char *s)
{
    int v = 0, i;

    for (i = 0; i < 4; i++) {
        int c = (unsigned char)s[i], d;

        if (c >= '0' && c <= '9') {
            d = c - '0';
        } else if (c >= 'a' && c <= 'f') {
            d = c - 'a' + 10;
        } else if (c >= 'A' && c <= 'F') {
            d = c - 'A' + 10;
        } else {
            return -1;
        }
        v = v * 16 + d;
    }
    return v;
}

static json_t *parse_string(struct parser *p, const char *tok)
{
    const char *s = tok + 1;
    const char *tok_end = tok + strlen(tok);
    char quote = tok[0], utf8[4];
    struct bytes *out = &p->scratch;

    out->len = 0;
    if (bytes_reserve(out, 1) < 0) {
        goto nomem;
    }
    out->p[0] = '\0';
    while (*s != quote) {
        /* Plain printable ASCII stands for itself: copy it as one run. */
        if ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x80 &&
            *s != '\\') {
            const char *run = s;

            s += plain_run((const unsigned char *)s, (size_t)(tok_end - s));
            while ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x80 &&
                   *s != '\\' && *s != quote) {
                s++;
            }
            if (bytes_add(out, run, (size_t)(s - run)) < 0) {
                goto nomem;
            }
            continue;
        }
        if (*s == '\\') {
            const char *esc = s;
            const char *rep = NULL;
            long cp;

            s++;
            switch (*s++) {
            case '"':
                rep = "\"";
                break;
            case '\'':
                rep = "'";
                break;
            case '\\':
                rep = "\\";
                break;
            case '/':
                rep = "/";
                break;
            case 'b':
                rep = "\b";
                break;
            case 'f':
                rep = "\f";
                break;
            case 'n':
                rep = "\n";
                break;
            case 'r':
                rep = "\r";
                break;
            case 't':
                rep = "\t";
                break;
            case 'u':
                cp = hex4(s);
                if (cp >= 0) {
                    s += 4;
                }
                /* A high surrogate directly followed by \uXXXX must pair
                 * with a low one; anything else is not a character. */
                if (cp >= 0xD800 && cp <= 0xDBFF && s[0] == '\\' &&
                    s[1] == 'u') {
                    int lo = hex4(s + 2);

                    if (lo >= 0xDC00 && lo <= 0xDFFF) {
                        cp = 0x10000 + ((cp & 0x3FF) << 10) + (lo & 0x3FF);
                        s += 6;
                    } else {
                        cp = -1;
                    }
                }
                if (!codepoint_ok(cp)) {
                    /* QEMU quotes the 6 bytes from the backslash (or up to
                     * the end of the token, quote included). */
                    size_t n = (size_t)(tok_end - esc);

                    parse_error(p, "%.*s is not a valid Unicode character",
                                (int)(n < 6 ? n : 6), esc);
                    return NULL;
                }
                if (bytes_add(out, utf8, utf8_encode(utf8, cp)) < 0) {
                    goto nomem;
                }
                continue;
            default:
                parse_error(p, "invalid escape sequence in string");
                return NULL;
            }
            if (bytes_add(out, rep, 1) < 0) {
                goto nomem;
            }
        } else {
            size_t used;
            int cp = utf8_decode((const unsigned char *)s,
                                 (size_t)(tok_end - s), &used);

            if (cp < 0) {
                parse_error(p, "invalid UTF-8 sequence in string");
                return NULL;
            }
            if (bytes_add(out, utf8, utf8_encode(utf8, cp)) < 0) {
                goto nomem;
            }
            s += used;
        }
    }
    return json_stringn_nocheck(out->p, out->len);

nomem:
    parse_error(p, "out of memory");
    return NULL;
}

/* jansson refuses to build non-finite reals, but QEMU turns 1e400 into an
 * infinite double and echoes it as "inf". Store the value into a finite
 * real behind jansson's back; json_real_t has been { json_t; double; } for
 * every jansson release, and the store is checked before it is trusted. */
struct real_layout {
    json_t json;
    double value;
};

static json_t *make_real(double d)
{
    char *field;
    json_t *v;

    if (isfinite(d)) {
        return json_real(d);
    }
    v = json_real(1.0);
    if (!v) {
        return NULL;
    }
    field = (char *)v + offsetof(struct real_layout, value);
    if (json_real_value(v) == 1.0 && memcmp(field, &(double){1.0}, 8) == 0) {
        memcpy(field, &d, sizeof(d));
        if (json_real_value(v) == d) {
            return v;
        }
    }
    /* Unknown layout: the closest finite value. */
    json_real_set(v, d > 0 ? DBL_MAX : -DBL_MAX);
    return v;
}

static json_t *parse_number(const char *tok, int type)
{
    if (type == T_INTEGER) {
        long long i;
        unsigned long long u;

        errno = 0;
        i = strtoll(tok, NULL, 10);
        if (errno == 0) {
            return json_integer(i);
        }
        /* Beyond int64: QEMU keeps values up to 2^64-1 exact as uint64.
         * jansson has no such type; a real is the nearest we can hold. */
        if (tok[0] != '-') {
            errno = 0;
            u = strtoull(tok, NULL, 10);
            if (errno == 0) {
                return make_real((double)u);
            }
        }
    }
    return make_real(strtod(tok, NULL));
}

static json_t *parse_value(struct parser *p);

static json_t *parse_object(struct parser *p)
{
    json_t *obj = json_object();
    const char *tok;

    pop_token(p); /* { */
    if (!obj) {
        parse_error(p, "out of memory");
        return NULL;
    }
    tok = peek_token(p);
    if (!tok) {
        parse_error(p, "premature EOI");
        goto fail;
    }
    if (token_type(tok) == T_RCURLY) {
        pop_token(p);
        return obj;
    }
    for (;;) {
        json_t *key, *val;

        if (!peek_token(p)) {
            parse_error(p, "premature EOI");
            goto fail;
        }
        key = parse_value(p);
        if (!json_is_string(key)) {
            json_decref(key);
            parse_error(p, "key is not a string in object");
            goto fail;
        }
        tok = pop_token(p);
        if (!tok) {
            json_decref(key);
            parse_error(p, "premature EOI");
            goto fail;
        }
        if (token_type(tok) != T_COLON) {
            json_decref(key);
            parse_error(p, "missing : in object pair");
            goto fail;
        }
        val = parse_value(p);
        if (!val) {
            json_decref(key);
            parse_error(p, "Missing value in dict");
            goto fail;
        }
        /* Checked after the value, as QEMU does: an error inside the value
         * wins over the duplicate. */
        if (json_object_get(obj, json_string_value(key))) {
            json_decref(key);
            json_decref(val);
            parse_error(p, "duplicate key");
            goto fail;
        }
        if (json_object_set_new_nocheck(obj, json_string_value(key), val)) {
            json_decref(key);
            parse_error(p, "out of memory");
            goto fail;
        }
        json_decref(key);

        tok = pop_token(p);
        if (!tok) {
            parse_error(p, "premature EOI");
            goto fail;
        }
        if (token_type(tok) == T_RCURLY) {
            return obj;
        }
        if (token_type(tok) != T_COMMA) {
            parse_error(p, "expected separator in dict");
            goto fail;
        }
    }

fail:
    json_decref(obj);
    return NULL;
}

static json_t *parse_array(struct parser *p)
{
    json_t *arr = json_array();
    const char *tok;

    pop_token(p); /* [ */
    if (!arr) {
        parse_error(p, "out of memory");
        return NULL;
    }
    tok = peek_token(p);
    if (!tok) {
        parse_error(p, "premature EOI");
        goto fail;
    }
    if (token_type(tok) == T_RSQUARE) {
        pop_token(p);
        return arr;
    }
    for (;;) {
        json_t *val = parse_value(p);

        if (!val) {
            parse_error(p, "expecting value");
            goto fail;
        }
        if (json_array_append_new(arr, val)) {
            parse_error(p, "out of memory");
            goto fail;
        }
        tok = pop_token(p);
        if (!tok) {
            parse_error(p, "premature EOI");
            goto fail;
        }
        if (token_type(tok) == T_RSQUARE) {
            return arr;
        }
        if (token_type(tok) != T_COMMA) {
            parse_error(p, "expected separator in list");
            goto fail;
        }
    }

fail:
    json_decref(arr);
    return NULL;
}

static json_t *parse_value(struct parser *p)
{
    const char *tok = peek_token(p);
    json_t *v;
    int type;

    if (!tok) {
        parse_error(p, "premature EOI");
        return NULL;
    }
    type = token_type(tok);
    switch (type) {
    case T_LCURLY:
        return parse_object(p);
    case T_LSQUARE:
        return parse_array(p);
    case T_STRING:
        pop_token(p);
        return parse_string(p, tok);
    case T_INTEGER:
    case T_FLOAT:
        pop_token(p);
        v = parse_number(tok, type);
        break;
    case T_WORD:
        pop_token(p);
        if (!strcmp(tok, "true")) {
            v = json_true();
        } else if (!strcmp(tok, "false")) {
            v = json_false();
        } else if (!strcmp(tok, "null")) {
            v = json_null();
        } else {
            parse_error(p, "invalid keyword '%s'", tok);
            return NULL;
        }
        break;
    default:
        parse_error(p, "expecting value");
        return NULL;
    }
    if (!v) {
        parse_error(p, "out of memory");
    }
    return v;
}

/* ---- framer and lexer driver ------------------------------------------- */

struct qmp_stream {
    size_t max_bytes;
    qmp_stream_cb *cb;
    void *opaque;

    int state; /* enum lex_state */
    /* buf holds the stored tokens of the message in progress (used bytes,
     * each token NUL-terminated) followed by the token being lexed (cur
     * bytes). Between calls used + cur <= max_bytes; the buffer has one
     * more byte for the transient state inside one step. */
    char *buf;
    size_t cap, used, cur;
    size_t ntokens;
    long braces, brackets;
    /* The token being lexed can no longer fit; the stored tokens were
     * dropped and the message will end with an error when it completes. */
    bool doomed;
    bool stopped;
    struct bytes msg; /* error text handed to cb */
};

struct qmp_stream *qmp_stream_new(size_t max_bytes, qmp_stream_cb *cb,
                                  void *opaque)
{
    struct qmp_stream *s = calloc(1, sizeof(*s));

    if (!s) {
        return NULL;
    }
    s->max_bytes = max_bytes > 1 ? max_bytes : QMP_JSON_DEFAULT_BYTES;
    s->cb = cb;
    s->opaque = opaque;
    s->state = L_START;
    return s;
}

void qmp_stream_free(struct qmp_stream *s)
{
    if (s) {
        free(s->buf);
        free(s->msg.p);
        free(s);
    }
}

void qmp_stream_stop(struct qmp_stream *s)
{
    s->stopped = true;
}

size_t qmp_stream_pending(const struct qmp_stream *s)
{
    return s->used + s->cur;
}

/* Forgets the message in progress; a large buffer is given back so that an
 * idle client does not keep its high-water mark. */
static void frame_reset(struct qmp_stream *s)
{
    s->used = 0;
    s->ntokens = 0;
    s->braces = 0;
    s->brackets = 0;
    s->doomed = false;
    if (s->cap > 65536 && s->cur == 0) {
        free(s->buf);
        s->buf = NULL;
        s->cap = 0;
    }
}

/* Error texts go to the client as JSON strings: replace what the encoder
 * would print as U+FFFD by U+FFFD itself, so the text is valid UTF-8 and
 * can be given to json_string(). (C0 80 also becomes U+FFFD; QEMU would
 * print \u0000 for it, in stray text only.) */
static void emit_error(struct qmp_stream *s, const char *text, size_t n)
{
    size_t i = 0;

    s->msg.len = 0;
    if (bytes_reserve(&s->msg, n * 3 + 1) < 0) {
        s->cb(s->opaque, NULL, "JSON parse error, out of memory");
        return;
    }
    while (i < n) {
        size_t used;
        int cp = utf8_decode((const unsigned char *)text + i, n - i, &used);

        if (cp <= 0) {
            memcpy(s->msg.p + s->msg.len, "\xEF\xBF\xBD", 3);
            s->msg.len += 3;
        } else {
            memcpy(s->msg.p + s->msg.len, text + i, used);
            s->msg.len += used;
        }
        i += used;
    }
    s->msg.p[s->msg.len] = '\0';
    s->cb(s->opaque, NULL, s->msg.p);
}

static void emit_limit(struct qmp_stream *s, const char *text)
{
    frame_reset(s);
    s->cb(s->opaque, NULL, text);
}

/* The lexer found an invalid byte; the text so far (the byte included) is
 * quoted up to its first NUL, like QEMU's "%s". */
static void emit_stray(struct qmp_stream *s)
{
    const char *tok = s->buf + s->used;
    size_t n = strnlen(tok, s->cur);
    char prefix[] = "JSON parse error, stray '";
    struct bytes raw = {0};

    if (bytes_add(&raw, prefix, sizeof(prefix) - 1) < 0 ||
        bytes_add(&raw, tok, n) < 0 || bytes_add(&raw, "'", 1) < 0) {
        free(raw.p);
        s->cur = 0;
        emit_limit(s, "JSON parse error, out of memory");
        return;
    }
    s->cur = 0;
    frame_reset(s);
    emit_error(s, raw.p, raw.len);
    free(raw.p);
}

static void parse_and_emit(struct qmp_stream *s)
{
    struct parser p = {.pos = s->buf, .end = s->buf + s->used};
    json_t *v = parse_value(&p);

    if (v && peek_token(&p)) {
        /* Cannot happen with the framing above; kept for safety. */
        json_decref(v);
        v = NULL;
        parse_error(&p, "expecting value");
    }
    free(p.scratch.p);
    frame_reset(s);
    if (v) {
        s->cb(s->opaque, v, NULL);
    } else {
        emit_error(s, p.msg, strlen(p.msg));
    }
}

static int ensure_room(struct qmp_stream *s, size_t n)
{
    size_t need = s->used + s->cur + n, cap;
    char *p;

    if (need <= s->cap) {
        return 0;
    }
    /* One byte beyond the limit is needed transiently: the byte that makes
     * a token too big is stored before the token is judged. */
    if (need > s->max_bytes + 1) {
        return -EOVERFLOW; /* the limit checks make this unreachable */
    }
    cap = s->cap ? s->cap : 256;
    while (cap < need) {
        cap *= 2;
    }
    if (cap > s->max_bytes + 1) {
        cap = s->max_bytes + 1;
    }
    p = realloc(s->buf, cap);
    if (!p) {
        return -ENOMEM;
    }
    s->buf = p;
    s->cap = cap;
    return 0;
}

/* A token of type `type` ends at buf[used .. used+cur). */
static void frame_token(struct qmp_stream *s, int type)
{
    size_t len = s->cur;

    s->cur = 0;
    switch (type) {
    case T_LCURLY:
        s->braces++;
        break;
    case T_RCURLY:
        s->braces--;
        break;
    case T_LSQUARE:
        s->brackets++;
        break;
    case T_RSQUARE:
        s->brackets--;
        break;
    default:
        break;
    }
    /* Same order of checks as QEMU. The size counts one terminator byte
     * per token: that is what storing the token costs. */
    if (s->doomed || s->used + len + 1 > s->max_bytes) {
        emit_limit(s, "JSON token size limit exceeded");
        return;
    }
    if (s->ntokens + 1 > QMP_JSON_MAX_TOKENS) {
        emit_limit(s, "JSON token count limit exceeded");
        return;
    }
    if (s->braces + s->brackets > QMP_JSON_MAX_NESTING) {
        emit_limit(s, "JSON nesting depth limit exceeded");
        return;
    }
    /* s->cur is 0 now, so this asks for room for the terminator */
    if (ensure_room(s, len + 1) < 0) {
        emit_limit(s, "JSON parse error, out of memory");
        return;
    }
    s->buf[s->used + len] = '\0';
    s->used += len + 1;
    s->ntokens++;
    if ((s->braces > 0 || s->brackets > 0) && s->braces >= 0 &&
        s->brackets >= 0) {
        return;
    }
    parse_and_emit(s);
}

/* How many more bytes the token being lexed may take before it must be
 * checked against the limit. */
static size_t token_room(const struct qmp_stream *s)
{
    size_t held = s->used + s->cur;

    return held < s->max_bytes ? s->max_bytes - held : 0;
}

/* Appends bytes to the token being lexed (n <= token_room()). */
static int token_append(struct qmp_stream *s, const char *data, size_t n)
{
    if (ensure_room(s, n) < 0) {
        s->cur = 0;
        s->state = L_RECOVER;
        emit_limit(s, "JSON parse error, out of memory");
        return -1;
    }
    memcpy(s->buf + s->used + s->cur, data, n);
    s->cur += n;
    return 0;
}

/* Applies the size limit to a token still being lexed: once it cannot fit
 * anymore the message is doomed (its stored tokens are dropped now, the
 * error comes when the token ends, as in QEMU), and a token that alone
 * reaches the limit is cut off, the lexer restarting right after it like
 * QEMU's does for an oversized token. Returns -1 after a cut. */
static int token_check(struct qmp_stream *s)
{
    if (s->used + s->cur + 1 <= s->max_bytes) {
        return 0;
    }
    if (s->used > 0) {
        memmove(s->buf, s->buf + s->used, s->cur);
        s->used = 0;
        s->ntokens = 0;
        s->doomed = true;
    }
    if (s->cur < s->max_bytes) {
        return 0;
    }
    s->cur = 0;
    s->state = L_START;
    emit_limit(s, "JSON token size limit exceeded");
    return -1;
}

/* Runs one byte (or, with flush, the end of input) through the lexer. */
static void lex_byte(struct qmp_stream *s, unsigned char c, bool flush)
{
    bool consumed = false;

    while (flush ? s->state != L_START : !consumed) {
        int next = lex_table[s->state][flush ? 0 : c];

        consumed = !flush && !(next & LOOKAHEAD);
        next &= ~LOOKAHEAD;
        if (next == L_START || next == L_RECOVER) {
            /* whitespace, or skipped bytes: never part of a token */
            s->cur = 0;
            s->state = next;
            continue;
        }
        if (consumed && token_append(s, (const char *)&c, 1) < 0) {
            return;
        }
        if (next == L_ERROR) {
            s->state = L_RECOVER;
            emit_stray(s);
        } else if (next >= T_FIRST) {
            s->state = L_START;
            frame_token(s, next);
        } else {
            s->state = next;
            if (consumed && token_check(s) < 0) {
                return;
            }
        }
        if (s->stopped) {
            return;
        }
    }
}

/* Length of the run at p that leaves the lexer in the same state. */
static size_t same_state_run(int state, const unsigned char *p, size_t n)
{
    const uint8_t *row = lex_table[state];
    size_t i = 0;

    if (state == L_DQ || state == L_SQ) {
        i = plain_run(p, n); /* all of it stays inside a string */
    }
    while (i < n && row[p[i]] == state) {
        i++;
    }
    return i;
}

void qmp_stream_feed(struct qmp_stream *s, const char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf;
    const unsigned char *end = p + len;

    while (p < end && !s->stopped) {
        size_t run;

        /* Bulk paths for long runs: whitespace, skipped bytes and string
         * contents do not need the full per-byte machinery. */
        switch (s->state) {
        case L_START:
        case L_RECOVER:
            p += same_state_run(s->state, p, (size_t)(end - p));
            if (p == end) {
                return;
            }
            break;
        case L_DQ:
        case L_SQ:
            run = same_state_run(s->state, p, (size_t)(end - p));
            if (run > token_room(s)) {
                run = token_room(s);
            }
            if (run > 0) {
                p += run;
                if (token_append(s, (const char *)p - run, run) < 0 ||
                    token_check(s) < 0) {
                    continue;
                }
                if (p == end) {
                    return;
                }
            }
            break;
        default:
            break;
        }
        lex_byte(s, *p++, false);
    }
}

/* ---- one-shot parsing ---------------------------------------------------- */

struct parse_one {
    json_t *result;
    const char *err;
};

static __thread char parse_one_err[1200];

static void parse_one_cb(void *opaque, json_t *value, const char *errdesc)
{
    struct parse_one *r = opaque;

    if (r->result) {
        json_decref(r->result);
        r->result = NULL;
        r->err = "Expecting at most one JSON value";
    }
    if (r->err) {
        json_decref(value);
        return;
    }
    if (value) {
        r->result = value;
    } else {
        snprintf(parse_one_err, sizeof(parse_one_err), "%s", errdesc);
        r->err = parse_one_err;
    }
}

/* Like QEMU's qobject_from_json(): the end of the text ends the last token,
 * and anything but exactly one value is an error. */
json_t *qmp_json_parse(const char *text, const char **errdesc)
{
    struct parse_one r = {0};
    struct qmp_stream *s;

    s = qmp_stream_new(JSON_QEMU_MAX_BYTES, parse_one_cb, &r);
    if (!s) {
        if (errdesc) {
            *errdesc = "out of memory";
        }
        return NULL;
    }
    qmp_stream_feed(s, text, strlen(text));
    lex_byte(s, 0, true);
    if (s->used > 0) {
        parse_and_emit(s); /* unbalanced: "premature EOI" */
    }
    qmp_stream_free(s);
    if (!r.result && !r.err) {
        r.err = "Expecting a JSON value";
    }
    if (!r.result && errdesc) {
        *errdesc = r.err;
    }
    return r.result;
}

/* ---- encoder -------------------------------------------------------------
 *
 * QEMU's compact form: ", " and ": " separators, members in insertion
 * order, ASCII only. Strings are decoded as modified UTF-8 (so C0 80 prints
 * as \u0000); anything undecodable prints as \uFFFD, one per bad sequence,
 * exactly like QEMU. Iterative, so nesting depth costs heap, not stack.
 */

static int encode_string(struct bytes *out, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;

    if (bytes_reserve(out, n + 2) < 0 || bytes_add(out, "\"", 1) < 0) {
        return -ENOMEM;
    }
    while (i < n) {
        char esc[16];
        size_t run = i, used;
        int cp;

        /* printable ASCII other than " and \ goes out as is */
        run += plain_run(s + run, n - run);
        while (run < n && s[run] >= 0x20 && s[run] < 0x7F && s[run] != '"' &&
               s[run] != '\\') {
            run++;
        }
        if (run > i) {
            if (bytes_add(out, s + i, run - i) < 0) {
                return -ENOMEM;
            }
            i = run;
            continue;
        }
        cp = utf8_decode(s + i, n - i, &used);
        i += used;
        switch (cp) {
        case '"':
            strcpy(esc, "\\\"");
            break;
        case '\\':
            strcpy(esc, "\\\\");
            break;
        case '\b':
            strcpy(esc, "\\b");
            break;
        case '\f':
            strcpy(esc, "\\f");
            break;
        case '\n':
            strcpy(esc, "\\n");
            break;
        case '\r':
            strcpy(esc, "\\r");
            break;
        case '\t':
            strcpy(esc, "\\t");
            break;
        default:
            if (cp < 0) {
                cp = 0xFFFD;
            }
            if (cp > 0xFFFF) {
                snprintf(esc, sizeof(esc), "\\u%04X\\u%04X",
                         0xD800 + ((cp - 0x10000) >> 10),
                         0xDC00 + ((cp - 0x10000) & 0x3FF));
            } else {
                snprintf(esc, sizeof(esc), "\\u%04X", cp);
            }
            break;
        }
        if (bytes_add(out, esc, strlen(esc)) < 0) {
            return -ENOMEM;
        }
    }
    return bytes_add(out, "\"", 1);
}

static int encode_scalar(struct bytes *out, const json_t *v)
{
    char num[64];

    switch (json_typeof(v)) {
    case JSON_STRING:
        return encode_string(out, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(v));
        return bytes_add(out, num, strlen(num));
    case JSON_REAL:
        /* 17 significant digits round-trip any double; inf stays "inf" */
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        return bytes_add(out, num, strlen(num));
    case JSON_TRUE:
        return bytes_add(out, "true", 4);
    case JSON_FALSE:
        return bytes_add(out, "false", 5);
    default:
        return bytes_add(out, "null", 4);
    }
}

/* One member of an object being written, in output order. */
struct enc_member {
    void *iter;
    uint32_t bucket; /* QDict order only */
    uint32_t seq;    /* insertion position */
};

struct enc_frame {
    json_t *container;
    struct enc_member *members; /* objects */
    size_t index, count;
};

/* QEMU's QDict hashes keys into 512 buckets (the tdb/gdbm hash), iterates
 * the buckets in order and each bucket newest entry first. Every object
 * QEMU prints is a QDict, so this is the member order on qsd's wire. */
static uint32_t qdict_bucket(const char *key)
{
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(key);
    size_t i;

    for (i = 0; key[i]; i++) {
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return (1103515243u * v + 12345u) % 512;
}

static int qdict_member_cmp(const void *a, const void *b)
{
    const struct enc_member *x = a, *y = b;

    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    return x->seq > y->seq ? -1 : x->seq < y->seq;
}

/* Lists the members of a non-empty object in output order. */
static struct enc_member *object_members(json_t *obj, size_t n, bool qdict)
{
    struct enc_member *m = calloc(n, sizeof(*m));
    void *iter = json_object_iter(obj);
    size_t i;

    if (!m) {
        return NULL;
    }
    for (i = 0; i < n && iter; i++) {
        m[i].iter = iter;
        m[i].seq = (uint32_t)i;
        if (qdict) {
            m[i].bucket = qdict_bucket(json_object_iter_key(iter));
        }
        iter = json_object_iter_next(obj, iter);
    }
    if (qdict) {
        qsort(m, n, sizeof(*m), qdict_member_cmp);
    }
    return m;
}

/* Writes the key of the member at iter and ": ". */
static int encode_key(struct bytes *out, void *iter)
{
    if (encode_string(out, json_object_iter_key(iter),
                      json_object_iter_key_len(iter)) < 0) {
        return -ENOMEM;
    }
    return bytes_add(out, ": ", 2);
}

static char *encode(const json_t *value, size_t *len, bool qdict)
{
    struct bytes out = {0};
    struct enc_frame *stack = NULL, *top;
    size_t depth = 0, cap = 0;
    json_t *v = (json_t *)value;

    if (bytes_reserve(&out, 1) < 0) {
        goto fail;
    }
    out.p[0] = '\0';
    for (;;) {
        /* Write v; containers push a frame and descend into their first
         * element. */
        size_t n = json_is_object(v)  ? json_object_size(v)
                   : json_is_array(v) ? json_array_size(v)
                                      : 0;

        if (n > 0) {
            if (depth == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                struct enc_frame *ns = realloc(stack, ncap * sizeof(*ns));

                if (!ns) {
                    goto fail;
                }
                stack = ns;
                cap = ncap;
            }
            top = &stack[depth++];
            top->container = v;
            top->index = 0;
            top->count = n;
            top->members = NULL;
            if (json_is_object(v)) {
                top->members = object_members(v, n, qdict);
                if (!top->members || bytes_add(&out, "{", 1) < 0 ||
                    encode_key(&out, top->members[0].iter) < 0) {
                    goto fail;
                }
                v = json_object_iter_value(top->members[0].iter);
            } else {
                if (bytes_add(&out, "[", 1) < 0) {
                    goto fail;
                }
                v = json_array_get(v, 0);
            }
            continue;
        }
        if (json_is_object(v) || json_is_array(v)) {
            if (bytes_add(&out, json_is_object(v) ? "{}" : "[]", 2) < 0) {
                goto fail;
            }
        } else if (v ? encode_scalar(&out, v) < 0
                     : bytes_add(&out, "null", 4) < 0) {
            goto fail;
        }
        /* Climb up past finished containers to the next element. */
        for (;;) {
            if (depth == 0) {
                goto done;
            }
            top = &stack[depth - 1];
            if (++top->index < top->count) {
                if (bytes_add(&out, ", ", 2) < 0) {
                    goto fail;
                }
                if (top->members) {
                    void *iter = top->members[top->index].iter;

                    if (encode_key(&out, iter) < 0) {
                        goto fail;
                    }
                    v = json_object_iter_value(iter);
                } else {
                    v = json_array_get(top->container, top->index);
                }
                break;
            }
            if (bytes_add(&out, top->members ? "}" : "]", 1) < 0) {
                goto fail;
            }
            free(top->members);
            depth--;
        }
    }

done:
    free(stack);
    if (len) {
        *len = out.len;
    }
    return out.p;

fail:
    while (depth > 0) {
        free(stack[--depth].members);
    }
    free(stack);
    free(out.p);
    return NULL;
}

char *qmp_json_encode(const json_t *value, size_t *len)
{
    return encode(value, len, false);
}

char *qmp_json_encode_qdict(const json_t *value, size_t *len)
{
    return encode(value, len, true);
}

const char **qmp_json_qdict_keys(const json_t *obj, size_t *n)
{
    size_t count = json_object_size(obj);
    struct enc_member *m;
    const char **keys;

    *n = 0;
    if (count == 0) {
        return NULL;
    }
    m = object_members((json_t *)obj, count, true);
    keys = calloc(count, sizeof(*keys));
    if (!m || !keys) {
        abort();
    }
    for (size_t i = 0; i < count; i++) {
        keys[i] = json_object_iter_key(m[i].iter);
    }
    free(m);
    *n = count;
    return keys;
}
