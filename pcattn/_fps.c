/*
 * Farthest point sampling on the CPU, compiled (optional accelerator of pcattn.graphs.fps).
 *
 *   fps(pos, dims, is_double, ptr, take, start, out)
 *
 * pos    C-contiguous coordinates in "structure of arrays" order: (D, N), float32 or float64
 * ptr    int64 (B + 1,)   first point of each cloud
 * take   int64 (B,)       points to sample in each cloud
 * start  int64 (B,)       local index of each cloud's first sample
 * out    int64 (sum take) global indices, cloud after cloud, in sampling order (written)
 *
 * The arithmetic is the same as the reference loop in pcattn.graphs: in the input precision,
 * d = (x0 - q0)^2, then d += (xc - qc)^2 for each further coordinate (no fused multiply-add:
 * built with -ffp-contract=off), min_dist = min(min_dist, d), next = first index of the maximum
 * among the points not yet taken (a taken point's min_dist is -inf, so a cloud of duplicates
 * yields distinct indices). So the result is identical to the pure-PyTorch path and to a
 * textbook loop. pcattn.graphs.fps checks that the squared distances fit the precision (or
 * passes float64), so no d is inf here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define LANES 16

/* One step over a cloud of n points: update the running minimum with the squared distance to
 * the point `last`, and return the first index of the new maximum. The lane-blocked loop lets
 * the compiler vectorise the update and the arg-max together; the lanes then agree on the
 * lowest index among equal maxima. Compiled for AVX2 and for the baseline, chosen at run time. */
/* The squared distance of point i to q, coordinate by coordinate (DIMS known at compile time
 * for 2 and 3, so the lane loop below vectorises). */
#define SQDIST(T, DIMS, x, q, i, dims, out)                                                   \
    do {                                                                                      \
        const int nd_ = (DIMS) > 0 ? (DIMS) : (dims);                                         \
        T diff_ = x[0][i] - q[0];                                                             \
        T d_ = diff_ * diff_;                                                                 \
        for (int c_ = 1; c_ < nd_; c_++) {                                                    \
            diff_ = x[c_][i] - q[c_];                                                         \
            d_ = d_ + diff_ * diff_;                                                          \
        }                                                                                     \
        out = d_;                                                                             \
    } while (0)

#define DEFINE_STEP(NAME, T, IDX, DIMS)                                                       \
    __attribute__((target_clones("avx2", "default"))) static Py_ssize_t NAME(                 \
        const T *const *x, int dims, Py_ssize_t n, Py_ssize_t last, T *mind) {                \
        T q[8];                                                                               \
        for (int c = 0; c < dims; c++) q[c] = x[c][last];                                     \
        T bestv[LANES];                                                                       \
        IDX besti[LANES];                                                                     \
        for (int j = 0; j < LANES; j++) {                                                     \
            bestv[j] = -INFINITY;                                                             \
            besti[j] = 0;                                                                     \
        }                                                                                     \
        Py_ssize_t i0 = 0;                                                                    \
        for (; i0 + LANES <= n; i0 += LANES) {                                                \
            for (int j = 0; j < LANES; j++) {                                                 \
                const Py_ssize_t i = i0 + j;                                                  \
                T d;                                                                          \
                SQDIST(T, DIMS, x, q, i, dims, d);                                            \
                const T m = d < mind[i] ? d : mind[i];                                        \
                mind[i] = m;                                                                  \
                const int gt = m > bestv[j];                                                  \
                bestv[j] = gt ? m : bestv[j];                                                 \
                besti[j] = gt ? (IDX)i : besti[j];                                            \
            }                                                                                 \
        }                                                                                     \
        for (Py_ssize_t i = i0; i < n; i++) { /* tail */                                     \
            T d;                                                                              \
            SQDIST(T, DIMS, x, q, i, dims, d);                                                \
            const T m = d < mind[i] ? d : mind[i];                                            \
            mind[i] = m;                                                                      \
            const int j = (int)(i - i0);                                                      \
            if (m > bestv[j]) {                                                               \
                bestv[j] = m;                                                                 \
                besti[j] = (IDX)i;                                                            \
            }                                                                                 \
        }                                                                                     \
        T best = bestv[0];                                                                    \
        IDX arg = besti[0];                                                                   \
        for (int j = 1; j < LANES; j++) {                                                     \
            if (bestv[j] > best || (bestv[j] == best && besti[j] < arg)) {                    \
                best = bestv[j];                                                              \
                arg = besti[j];                                                               \
            }                                                                                 \
        }                                                                                     \
        return (Py_ssize_t)arg;                                                               \
    }

#define DEFINE_FPS(NAME, STEP, T)                                                             \
    static int NAME(const T *pos, Py_ssize_t n_total, int dims, const int64_t *ptr,           \
                    const int64_t *take, const int64_t *start, Py_ssize_t clouds,            \
                    int64_t *out) {                                                          \
        Py_ssize_t nmax = 0;                                                                  \
        for (Py_ssize_t b = 0; b < clouds; b++)                                               \
            if (ptr[b + 1] - ptr[b] > nmax) nmax = ptr[b + 1] - ptr[b];                       \
        T *mind = (T *)malloc(sizeof(T) * (size_t)(nmax > 0 ? nmax : 1));                     \
        if (mind == NULL) return -1;                                                          \
        const T *x[8];                                                                        \
        int64_t o = 0;                                                                        \
        for (Py_ssize_t b = 0; b < clouds; b++) {                                             \
            const Py_ssize_t base = ptr[b], n = ptr[b + 1] - ptr[b];                          \
            const int64_t m = take[b];                                                        \
            if (n == 0 || m == 0) continue;                                                   \
            for (int c = 0; c < dims; c++) x[c] = pos + (size_t)c * n_total + base;           \
            for (Py_ssize_t i = 0; i < n; i++) mind[i] = INFINITY;                            \
            Py_ssize_t last = start[b];                                                       \
            for (int64_t t = 0; t < m; t++) {                                                 \
                out[o + t] = base + last;                                                     \
                if (t + 1 == m) break;                                                        \
                mind[last] = -INFINITY; /* taken: never the maximum again */                  \
                if (dims == 3)                                                                \
                    last = STEP##3(x, dims, n, last, mind);                                   \
                else if (dims == 2)                                                           \
                    last = STEP##2(x, dims, n, last, mind);                                   \
                else                                                                          \
                    last = STEP##n(x, dims, n, last, mind);                                   \
            }                                                                                 \
            o += m;                                                                           \
        }                                                                                     \
        free(mind);                                                                           \
        return 0;                                                                             \
    }

/* int32 lane indices for float (same width, so the blend vectorises); a float32 cloud of more
 * than 2^31 points is refused by the argument check below. */
DEFINE_STEP(step_float3, float, int32_t, 3)
DEFINE_STEP(step_float2, float, int32_t, 2)
DEFINE_STEP(step_floatn, float, int32_t, 0)
DEFINE_STEP(step_double3, double, int64_t, 3)
DEFINE_STEP(step_double2, double, int64_t, 2)
DEFINE_STEP(step_doublen, double, int64_t, 0)
DEFINE_FPS(fps_float, step_float, float)
DEFINE_FPS(fps_double, step_double, double)

static PyObject *fps(PyObject *self, PyObject *args) {
    Py_buffer pos, ptr, take, start, out;
    int dims, is_double;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*ipy*y*y*w*", &pos, &dims, &is_double, &ptr, &take, &start,
                          &out))
        return NULL;
    const Py_ssize_t item = is_double ? (Py_ssize_t)sizeof(double) : (Py_ssize_t)sizeof(float);
    const Py_ssize_t clouds = take.len / (Py_ssize_t)sizeof(int64_t);
    int status = -2;
    int ok = dims >= 1 && dims <= 8 && pos.len % (item * dims) == 0 &&
             ptr.len == (clouds + 1) * (Py_ssize_t)sizeof(int64_t) && start.len == take.len;
    const Py_ssize_t n_total = ok ? pos.len / (item * dims) : 0;
    if (ok) { /* every index the loops touch must lie inside the buffers */
        const int64_t *p = (const int64_t *)ptr.buf, *k = (const int64_t *)take.buf;
        const int64_t *s0 = (const int64_t *)start.buf;
        int64_t total = 0;
        ok = p[0] == 0 && p[clouds] == n_total;
        for (Py_ssize_t b = 0; ok && b < clouds; b++) {
            const int64_t n = p[b + 1] - p[b];
            ok = n >= 0 && (is_double || n <= INT32_MAX) && k[b] >= 0 && k[b] <= n && (n == 0 || (s0[b] >= 0 && s0[b] < n));
            total += k[b];
        }
        ok = ok && out.len == total * (Py_ssize_t)sizeof(int64_t);
    }
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        if (is_double)
            status = fps_double((const double *)pos.buf, n_total, dims, (const int64_t *)ptr.buf,
                                (const int64_t *)take.buf, (const int64_t *)start.buf, clouds,
                                (int64_t *)out.buf);
        else
            status = fps_float((const float *)pos.buf, n_total, dims, (const int64_t *)ptr.buf,
                               (const int64_t *)take.buf, (const int64_t *)start.buf, clouds,
                               (int64_t *)out.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&pos);
    PyBuffer_Release(&ptr);
    PyBuffer_Release(&take);
    PyBuffer_Release(&start);
    PyBuffer_Release(&out);
    if (status == -1) return PyErr_NoMemory();
    if (status == -2) {
        PyErr_SetString(PyExc_ValueError, "_fps.fps: buffer sizes do not match");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fps", fps, METH_VARARGS, "Farthest point sampling over packed clouds (see module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fps", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fps(void) { return PyModule_Create(&module); }
