/* The fingerprints' hash on the CPU, for many tensors in one call.
 *
 * mlrepro.training.word_hash defines the hash: a tensor's bytes read as 32-bit words x_i, each
 * multiplied by the i-th weight w_i, summed modulo 2**32. NumPy computes the same
 * (mlrepro.training.word_hash falls back to it where this module was not built), but only through a
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
"hash_words(buffers, weights, out)\n\n"
"For each i with buffers[i] not None: out[i] = sum of word[j] * weights[j] over the 32-bit\n"
"words of buffers[i], modulo 2**32. buffers: a sequence of C-contiguous objects with the\n"
"buffer protocol (NumPy arrays of a tensor's words), each a whole number of words and no\n"
"longer than weights; weights: 32-bit array; out: writable uint32 array as long as buffers.\n"
"Entries that are None are left as they are. Every length is checked: nothing is read\n"
"beyond a buffer, whatever is passed.");

static PyObject *
hash_words(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "hash_words(buffers, weights, out)");
        return NULL;
    }
    PyObject *buffers = PySequence_Fast(args[0], "buffers: a sequence of buffers or None");
    if (buffers == NULL)
        return NULL;
    Py_buffer weights, out;
    if (buffer_of(args[1], &weights, 0, 4, "weights") < 0) {
        Py_DECREF(buffers);
        return NULL;
    }
    if (buffer_of(args[2], &out, 1, 4, "out") < 0) {
        PyBuffer_Release(&weights);
        Py_DECREF(buffers);
        return NULL;
    }
    Py_ssize_t tensors = PySequence_Fast_GET_SIZE(buffers);
    Py_ssize_t weight_count = weights.len / 4;
    uint32_t *result = (uint32_t *)out.buf;
    if (out.len / 4 != tensors)
        PyErr_SetString(PyExc_ValueError, "out must be as long as buffers");
    for (Py_ssize_t i = 0; !PyErr_Occurred() && i < tensors; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(buffers, i);
        if (item == Py_None)
            continue;
        Py_buffer words;
        if (PyObject_GetBuffer(item, &words, PyBUF_C_CONTIGUOUS) < 0)
            break;
        if (words.len % 4 != 0 || words.len / 4 > weight_count)
            PyErr_Format(PyExc_ValueError, "buffers[%zd]: %zd bytes is not a whole number of words, or more "
                         "words than the %zd weights", i, words.len, weight_count);
        else
            result[i] = weighted_sum((const uint32_t *)words.buf, (const uint32_t *)weights.buf, words.len / 4);
        PyBuffer_Release(&words);
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&weights);
    Py_DECREF(buffers);
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
    "The fingerprints' hash, compiled: see mlrepro.training.word_hash.", -1, methods,
};

PyMODINIT_FUNC
PyInit__wordhash(void)
{
    return PyModule_Create(&wordhash_module);
}
