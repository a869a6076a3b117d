/* The simulator's filler text, compiled: the same tokens as hybrid/sim/model.py's pure-Python
 * `seeded_tokens`, from the same Mersenne Twister numbers CPython's `random` draws.
 *
 * Why it exists: at time scale 0 drawing and assembling the words of each distinct reply was a
 * fifth of the simulator's instructions per request, and the simulator must cost well under half
 * of what the kit's fastest client spends per call (benchmarks/uvloop_speed.py).  Seeded texts
 * must not change (users' notebooks compare them), so this is CPython's MT19937 as
 * Modules/_randommodule.c seeds it (init_by_array over the seed's 32-bit words, least significant
 * first) and draws it (genrand_uint32, getrandbits(k) = the word's top k bits), with one saving:
 * the state is regenerated ("twisted") word by word as the words are needed, in the order the full
 * twist computes them, instead of all 624 at once.  tests/test_sim.py compares the two
 * implementations over many seeds and lengths.  setup.py builds it as an optional extension: where
 * it cannot be compiled, model.py uses the pure-Python code and the texts are the same. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define N 624
#define M 397
#define MATRIX_A 0x9908b0dfU
#define UPPER_MASK 0x80000000U
#define LOWER_MASK 0x7fffffffU
/* A word is the draw byte >> 1 (72 words) and a sentence's length 8 + (byte >> 4): both of
 * random's draws accept exactly the top bytes below 144 (see model.py's _ACCEPTED_BELOW). */
#define ACCEPTED_BELOW 144

typedef struct {
    uint32_t mt[N];
    int next; /* the next word to twist and return */
} Twister;

/* init_genrand(19650218), the start of every init_by_array: the same for every seed, so computed once. */
static uint32_t initial_state[N];

static void
seed_twister(Twister *tw, unsigned long long seed)
{
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    int key_length = key[1] ? 2 : 1; /* CPython's key has as many 32-bit words as the seed needs, at least one */
    uint32_t *mt = tw->mt;
    int i = 1, j = 0, k;
    memcpy(mt, initial_state, sizeof(initial_state));
    for (k = N; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525U)) + key[j] + (uint32_t)j;
        i++;
        j++;
        if (i >= N) {
            mt[0] = mt[N - 1];
            i = 1;
        }
        if (j >= key_length) {
            j = 0;
        }
    }
    for (k = N - 1; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941U)) - (uint32_t)i;
        i++;
        if (i >= N) {
            mt[0] = mt[N - 1];
            i = 1;
        }
    }
    mt[0] = 0x80000000U;
    tw->next = 0;
}

/* The next 32-bit output.  Twisting word kk in place reads words kk + 1 and kk + M (mod N), which the
 * full twist reads in the same state when it goes in order, so twisting lazily changes no output. */
static inline uint32_t
next_word(Twister *tw)
{
    int kk = tw->next;
    uint32_t *mt = tw->mt;
    uint32_t y = (mt[kk] & UPPER_MASK) | (mt[kk + 1 < N ? kk + 1 : 0] & LOWER_MASK);
    mt[kk] = mt[kk + M < N ? kk + M : kk + M - N] ^ (y >> 1) ^ ((y & 1U) ? MATRIX_A : 0U);
    tw->next = kk + 1 < N ? kk + 1 : 0;
    y = mt[kk];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= (y >> 18);
    return y;
}

/* random.randint(low, high): low + _randbelow(width), each try getrandbits(width.bit_length()). */
static long
draw_between(Twister *tw, long low, long high)
{
    uint64_t width = (uint64_t)(high - low) + 1;
    int bits = 0;
    uint32_t r;
    while ((width >> bits) != 0) {
        bits++;
    }
    do {
        r = next_word(tw) >> (32 - bits);
    } while (r >= width);
    return low + (long)r;
}

/* The top byte of the next draw random would accept. */
static inline int
next_draw(Twister *tw)
{
    uint32_t byte;
    do {
        byte = next_word(tw) >> 24;
    } while (byte >= ACCEPTED_BELOW);
    return (int)byte;
}

static int
check_table(PyObject *table, const char *name)
{
    /* Exactly: tables of another length mean model.py's word count changed, and with it the draws. */
    if (!PyList_CheckExact(table) || PyList_GET_SIZE(table) != ACCEPTED_BELOW) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of exactly %d strings", name, ACCEPTED_BELOW);
        return -1;
    }
    return 0;
}

static inline void
put(PyObject *tokens, Py_ssize_t at, PyObject *table, int byte)
{
    PyObject *token = PyList_GET_ITEM(table, byte);
    Py_INCREF(token);
    PyList_SET_ITEM(tokens, at, token);
}

/* seeded_tokens(seed, low, high, first, opening, spaced, stop) -> list[str]; see model.py. */
static PyObject *
seeded_tokens(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Twister tw;
    unsigned long long seed;
    long low, high, n_tokens, left, words, w;
    Py_ssize_t at = 0;
    PyObject *first, *opening, *spaced, *stop, *tokens;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "seeded_tokens takes 7 arguments");
        return NULL;
    }
    seed = PyLong_AsUnsignedLongLong(args[0]);
    low = PyLong_AsLong(args[1]);
    high = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (low < 0 || high < low || high - low >= 0x7fffffffL) {
        PyErr_SetString(PyExc_ValueError, "seeded_tokens needs 0 <= low <= high < low + 2**31");
        return NULL;
    }
    first = args[3], opening = args[4], spaced = args[5], stop = args[6];
    if (check_table(first, "first") || check_table(opening, "opening") || check_table(spaced, "spaced")) {
        return NULL;
    }
    seed_twister(&tw, seed);
    n_tokens = draw_between(&tw, low, high);
    tokens = PyList_New(n_tokens);
    if (tokens == NULL) {
        return NULL;
    }
    /* model.py's generated_tokens, step for step: a sentence's length, its words, a full stop. */
    left = n_tokens;
    while (left) {
        words = 8 + (next_draw(&tw) >> 4);
        if (words >= left) {
            words = left - 1 ? left - 1 : 1;
        }
        put(tokens, at, at ? opening : first, next_draw(&tw));
        at++;
        for (w = 1; w < words; w++, at++) {
            put(tokens, at, spaced, next_draw(&tw));
        }
        left -= words;
        if (left) {
            Py_INCREF(stop);
            PyList_SET_ITEM(tokens, at, stop);
            at++;
            left--;
        }
    }
    return tokens;
}

static PyMethodDef methods[] = {
    {"seeded_tokens", (PyCFunction)(void (*)(void))seeded_tokens, METH_FASTCALL,
     "The filler tokens random.Random(seed) would give: randint(low, high) of them (see model.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_filler", "The simulator's filler text, compiled (see model.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__filler(void)
{
    int i;
    initial_state[0] = 19650218U;
    for (i = 1; i < N; i++) {
        initial_state[i] = 1812433253U * (initial_state[i - 1] ^ (initial_state[i - 1] >> 30)) + (uint32_t)i;
    }
    return PyModule_Create(&module_def);
}
