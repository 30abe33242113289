/* The fingerprints' hash on the CPU, for many tensors in one call.
 *
 * mlrepro.training.watch defines the hash: a tensor's bytes read as 32-bit words x_i, each
 * multiplied by the i-th weight w_i, summed modulo 2**32. NumPy computes the same
 * (mlrepro.training.watch falls back to it where this module was not built), but only through a
 * products buffer and a handful of calls per tensor; right after backward, with the
 * interpreter's code and the tensors out of the caches, those calls cost more than the
 * arithmetic. Here each tensor is read once, in place, and nothing is written but one
 * word per tensor.
 *
 * Unsigned 32-bit products and sums wrap modulo 2**32 in C, which is the hash's own
 * arithmetic, and integer addition is associative: the compiler's vectorised sums, in
 * any lane order, give the same number as NumPy's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* One build runs well on any x86-64: GCC compiles the loop for AVX-512, AVX2 and the
 * baseline, and the loader picks the widest the processor has. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define WIDEST_VECTORS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WIDEST_VECTORS
#endif

WIDEST_VECTORS
static uint32_t weighted_sum(const uint32_t *words, const uint32_t *weights, Py_ssize_t count)
{
    uint32_t sum = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        sum += words[i] * weights[i];
    return sum;
}

static int
buffer_of(PyObject *object, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *name)
{
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: items of %zd bytes expected, not %zd", name, itemsize, view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(hash_words_doc,
"hash_words(addresses, counts, weights, out)\n\n"
"For each i with addresses[i] != 0: out[i] = sum of word[j] * weights[j] for j < counts[i],\n"
"modulo 2**32, where word[j] is the j-th 32-bit word at the address addresses[i].\n"
"addresses: a list of ints, each the address of counts[i] readable words (a live,\n"
"contiguous tensor's data_ptr()); counts: int64 array; weights: 32-bit array at least\n"
"as long as the largest count; out: writable uint32 array. Entries with address 0 are\n"
"left as they are.");

static PyObject *
hash_words(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "hash_words(addresses, counts, weights, out)");
        return NULL;
    }
    PyObject *addresses = PySequence_Fast(args[0], "addresses: a sequence of ints");
    if (addresses == NULL)
        return NULL;
    Py_buffer counts, weights, out;
    if (buffer_of(args[1], &counts, 0, 8, "counts") < 0) {
        Py_DECREF(addresses);
        return NULL;
    }
    if (buffer_of(args[2], &weights, 0, 4, "weights") < 0) {
        PyBuffer_Release(&counts);
        Py_DECREF(addresses);
        return NULL;
    }
    if (buffer_of(args[3], &out, 1, 4, "out") < 0) {
        PyBuffer_Release(&weights);
        PyBuffer_Release(&counts);
        Py_DECREF(addresses);
        return NULL;
    }
    Py_ssize_t tensors = PySequence_Fast_GET_SIZE(addresses);
    Py_ssize_t weight_count = weights.len / 4;
    const int64_t *count_of = (const int64_t *)counts.buf;
    uint32_t *result = (uint32_t *)out.buf;
    PyObject *failed = NULL;
    if (counts.len / 8 != tensors || out.len / 4 != tensors)
        failed = PyExc_ValueError;
    for (Py_ssize_t i = 0; failed == NULL && i < tensors; i++)
        if (count_of[i] < 0 || count_of[i] > weight_count)
            failed = PyExc_ValueError;
    if (failed != NULL) {
        PyErr_SetString(failed, "addresses, counts and out must be as long, each count between 0 and len(weights)");
    } else {
        for (Py_ssize_t i = 0; i < tensors; i++) {
            PyObject *item = PySequence_Fast_GET_ITEM(addresses, i);
            uintptr_t address = (uintptr_t)PyLong_AsVoidPtr(item);
            if (address == 0) {
                if (PyErr_Occurred())
                    break;
                continue;
            }
            result[i] = weighted_sum((const uint32_t *)address, (const uint32_t *)weights.buf, count_of[i]);
        }
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&weights);
    PyBuffer_Release(&counts);
    Py_DECREF(addresses);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"hash_words", (PyCFunction)(void (*)(void))hash_words, METH_FASTCALL, hash_words_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef wordhash_module = {
    PyModuleDef_HEAD_INIT, "mlrepro.training._wordhash",
    "The fingerprints' hash, compiled: see mlrepro.training.watch.", -1, methods,
};

PyMODINIT_FUNC
PyInit__wordhash(void)
{
    return PyModule_Create(&wordhash_module);
}
