//! The C header of an ahead-of-time object (`model.h`): the two entry
//! points, shape and size macros, the ABI version, the target and CPU level
//! the object was compiled for, and the C library symbols it needs.

use kiln_ir::TensorType;

use crate::aot::ABI_VERSION;
use crate::target::TileLevel;

/// Everything the header states.
pub(crate) struct HeaderInfo<'a> {
    /// symbol prefix (`kiln_<name>_run`)
    pub name: &'a str,
    /// target triple
    pub target: &'a str,
    /// CPU level
    pub cpu: &'a str,
    /// the input tensor's type
    pub input: &'a TensorType,
    /// the output tensor's type
    pub output: &'a TensorType,
    /// bytes of scratch per call
    pub scratch_bytes: usize,
    /// undefined symbols of the object
    pub undefined: &'a [String],
    /// whether the kernels use fused multiply-add
    pub fma: bool,
    /// the enabled boolean ISA flags of the object's Cranelift target
    /// (`has_avx2`, `has_lse`, `has_v`, ...)
    pub isa_flags: &'a [String],
    /// the GEMM tiles the object carries
    pub tiles: TileLevel,
    /// threads the kernels are partitioned for
    pub threads: usize,
}

/// The C test, one `&&`-joined expression, that the running CPU has what
/// the object's ISA flags assume; `"1"` when nothing beyond the baseline
/// of the triple is assumed. x86-64 asks the compiler's
/// `__builtin_cpu_supports` (GCC and Clang); aarch64 and riscv64 read the
/// kernel's `AT_HWCAP` bits.
fn cpu_test(target: &str, flags: &[String]) -> (String, &'static str) {
    let has = |f: &str| flags.iter().any(|x| x == f);
    let mut tests: Vec<String> = Vec::new();
    let mut include = "";
    if target.starts_with("x86_64") {
        // Cranelift flag -> the feature name __builtin_cpu_supports takes
        for (flag, feature) in [
            ("has_sse3", "sse3"),
            ("has_ssse3", "ssse3"),
            ("has_sse41", "sse4.1"),
            ("has_sse42", "sse4.2"),
            ("has_popcnt", "popcnt"),
            ("has_avx", "avx"),
            ("has_avx2", "avx2"),
            ("has_fma", "fma"),
            ("has_bmi1", "bmi"),
            ("has_bmi2", "bmi2"),
            ("has_avx512f", "avx512f"),
            ("has_avx512vl", "avx512vl"),
            ("has_avx512dq", "avx512dq"),
            ("has_avx512bw", "avx512bw"),
        ] {
            if has(flag) {
                tests.push(format!("__builtin_cpu_supports(\"{feature}\")"));
            }
        }
    } else if target.starts_with("aarch64") {
        // NEON and FP are baseline; LSE atomics are HWCAP_ATOMICS
        if has("has_lse") {
            include = "#include <sys/auxv.h>\n";
            tests.push("(getauxval(AT_HWCAP) & (1UL << 8)) != 0".into());
        }
    } else if target.starts_with("riscv64") && has("has_v") {
        // single-letter extensions are HWCAP bits 'A'..'Z'
        include = "#include <sys/auxv.h>\n";
        tests.push("(getauxval(AT_HWCAP) & (1UL << ('V' - 'A'))) != 0".into());
    }
    if tests.is_empty() {
        ("1".into(), include)
    } else {
        (tests.join(" && "), include)
    }
}

fn dims(t: &TensorType) -> String {
    t.shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The parallel-for types, shared by every model header (guarded, so two
/// models' headers can be included together).
const PARALLEL_TYPES: &str = "#ifndef KILN_PARALLEL_TYPES
#define KILN_PARALLEL_TYPES
/* One chunk of a kernel, as kiln hands it to a parallel-for. */
typedef void (*kiln_task_fn)(void *context, size_t index);
/* Calls task(context, i) for every i in [0, range), on any threads, and
 * returns when every call has returned (pthreadpool_parallelize_1d with
 * flags 0 has this shape). */
typedef void (*kiln_parallel_for_fn)(void *pool, kiln_task_fn task, void *context,
                                     size_t range);
#endif
";

/// The default parallel-for on POSIX threads, compiled only when the
/// includer defines `KILN_PTHREAD_POOL` (guarded like the types). The
/// protocol is the JIT pool's (`runtime/pool.rs`): the job's generation and
/// the next index share one atomic word, so a worker that wakes late can
/// never claim an index of a newer job; the caller claims too and then
/// waits for the finished count, so a worker that is not scheduled costs
/// nothing; idle workers spin, then sleep on a condition variable, and the
/// caller wakes sleepers after publishing (sequentially consistent on both
/// sides, so no wake-up is lost).
const PTHREAD_POOL: &str = r#"#if defined(KILN_PTHREAD_POOL) && !defined(KILN_PTHREAD_POOL_DEFINED)
#define KILN_PTHREAD_POOL_DEFINED
#ifdef __cplusplus
#error "kiln's default pthread pool is C11 (stdatomic.h); from C++ pass your own parallel-for"
#endif
/* A small default parallel-for on POSIX threads, for applications that have
 * none: `threads - 1` workers plus the calling thread claim indices from one
 * atomic counter; idle workers spin briefly, then sleep. One job at a time:
 * do not call kiln_pthread_pool_parallel_for on one pool from two threads
 * at once (use one pool per concurrent inference). Link with -pthread. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

/* Iterations an idle worker polls for the next job before it sleeps:
 * enough to bridge the gap between two kernels of one inference. */
#ifndef KILN_PTHREAD_POOL_SPINS
#define KILN_PTHREAD_POOL_SPINS 200000u
#endif

typedef struct kiln_pthread_pool {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    _Atomic uint64_t state;   /* generation << 32 | next index to claim */
    _Atomic size_t finished;  /* indices finished in the current job */
    _Atomic(kiln_task_fn) task;
    _Atomic(void *) context;
    _Atomic size_t range;
    atomic_int sleepers;
    atomic_int stop;
    int threads;
    pthread_t *workers;
} kiln_pthread_pool;

/* Claims and runs indices of job `gen` until none are left. */
static inline void kiln_pthread_pool_work_(kiln_pthread_pool *p, uint64_t gen) {
    /* read after observing `gen`: a newer job's values only ever meet a
     * failing claim below */
    kiln_task_fn task = atomic_load_explicit(&p->task, memory_order_relaxed);
    void *context = atomic_load_explicit(&p->context, memory_order_relaxed);
    size_t range = atomic_load_explicit(&p->range, memory_order_relaxed);
    uint64_t cur = atomic_load_explicit(&p->state, memory_order_acquire);
    for (;;) {
        if ((cur >> 32) != gen || (cur & 0xffffffffu) >= range) {
            return;
        }
        if (atomic_compare_exchange_weak_explicit(&p->state, &cur, cur + 1,
                                                  memory_order_acq_rel, memory_order_acquire)) {
            task(context, (size_t)(cur & 0xffffffffu));
            atomic_fetch_add_explicit(&p->finished, 1, memory_order_release);
            cur = atomic_load_explicit(&p->state, memory_order_acquire);
        }
    }
}

static void *kiln_pthread_pool_worker_(void *arg) {
    kiln_pthread_pool *p = (kiln_pthread_pool *)arg;
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen;
        unsigned spins = 0;
        for (;;) {
            gen = atomic_load_explicit(&p->state, memory_order_acquire) >> 32;
            if (gen != seen || atomic_load(&p->stop)) {
                break;
            }
            if (++spins < KILN_PTHREAD_POOL_SPINS) {
                continue;
            }
            pthread_mutex_lock(&p->lock);
            atomic_fetch_add(&p->sleepers, 1);
            if ((atomic_load(&p->state) >> 32) == seen && !atomic_load(&p->stop)) {
                pthread_cond_wait(&p->wake, &p->lock);
            }
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->lock);
            spins = 0;
        }
        if (atomic_load(&p->stop)) {
            return NULL;
        }
        seen = gen;
        kiln_pthread_pool_work_(p, gen);
    }
}

/* A pool of `threads` threads in all (the caller of parallel_for included),
 * or NULL when out of memory. If the system refuses to start a thread, the
 * pool runs on the threads it has. */
static inline kiln_pthread_pool *kiln_pthread_pool_create(int threads) {
    kiln_pthread_pool *p = (kiln_pthread_pool *)calloc(1, sizeof *p);
    if (p == NULL) {
        return NULL;
    }
    p->threads = threads < 1 ? 1 : threads;
    p->workers = (pthread_t *)calloc((size_t)p->threads, sizeof(pthread_t));
    if (p->workers == NULL) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    atomic_init(&p->state, 0);
    atomic_init(&p->finished, 0);
    atomic_init(&p->task, (kiln_task_fn)0);
    atomic_init(&p->context, (void *)0);
    atomic_init(&p->range, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->stop, 0);
    for (int t = 1; t < p->threads; t++) {
        if (pthread_create(&p->workers[t], NULL, kiln_pthread_pool_worker_, p) != 0) {
            p->threads = t;
            break;
        }
    }
    return p;
}

/* The kiln_parallel_for_fn of a kiln_pthread_pool (passed as `pool`). */
static inline void kiln_pthread_pool_parallel_for(void *pool, kiln_task_fn task, void *context,
                                                  size_t range) {
    kiln_pthread_pool *p = (kiln_pthread_pool *)pool;
    if (p == NULL || p->threads <= 1 || range <= 1 || range >= 0xffffffffu) {
        for (size_t i = 0; i < range; i++) {
            task(context, i);
        }
        return;
    }
    atomic_store_explicit(&p->task, task, memory_order_relaxed);
    atomic_store_explicit(&p->context, context, memory_order_relaxed);
    atomic_store_explicit(&p->range, range, memory_order_relaxed);
    atomic_store_explicit(&p->finished, 0, memory_order_relaxed);
    uint64_t gen = ((atomic_load_explicit(&p->state, memory_order_relaxed) >> 32) + 1) & 0xffffffffu;
    if (gen == 0) {
        gen = 1; /* workers start having seen generation 0 */
    }
    atomic_store(&p->state, gen << 32);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    kiln_pthread_pool_work_(p, gen);
    unsigned spins = 0;
    while (atomic_load_explicit(&p->finished, memory_order_acquire) < range) {
        if (++spins % 64u == 0) {
            sched_yield(); /* a worker holding a chunk may need this core */
        }
    }
}

/* Stops and joins the workers and frees the pool (NULL is a no-op). */
static inline void kiln_pthread_pool_destroy(kiln_pthread_pool *p) {
    if (p == NULL) {
        return;
    }
    atomic_store(&p->stop, 1);
    pthread_mutex_lock(&p->lock);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int t = 1; t < p->threads; t++) {
        pthread_join(p->workers[t], NULL);
    }
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p->workers);
    free(p);
}
#endif /* KILN_PTHREAD_POOL */
"#;

/// Renders `model.h`, the C header of the object `h` describes, section by
/// section.
pub(crate) fn header(h: &HeaderInfo) -> String {
    let up = h.name.to_ascii_uppercase();
    [
        preamble(h, &up),
        defines(h, &up),
        declarations(h, &up),
        checks(h, &up),
        tail(&up),
    ]
    .concat()
}

/// The opening comment: what the object is, its target, tiles and undefined
/// symbols, and how to call it (scratch, checks, threads).
fn preamble(h: &HeaderInfo, up: &str) -> String {
    let n = h.name;
    let needs = if h.undefined.is_empty() {
        "nothing (no undefined symbols)".to_string()
    } else {
        h.undefined.join(", ")
    };
    format!(
        "/* Generated by kiln (ahead-of-time object `{n}`). Do not edit.
 *
 * Target: {target}, CPU level {cpu}; fused multiply-add: {fma}.
 * GEMM tiles: {tiles_what}.
 * Undefined symbols the object needs (C library / libm): {needs}.
 *
 * Usage: allocate KILN_{up}_SCRATCH_BYTES (or kiln_{n}_scratch_bytes())
 * bytes of scratch, 64-byte aligned (aligned_alloc); it needs no
 * initialisation (no kernel reads scratch it has not written in the same
 * call). Reuse it across calls, one scratch per concurrent call. Call
 * kiln_{n}_run_sized: it checks the sizes, the alignment, overlap and the
 * CPU, and returns a KILN_{up}_* code. Tensors are dense row-major (NCHW)
 * float32. The object is reentrant given distinct scratch buffers.
 *
 * Threads: kiln_{n}_run and kiln_{n}_run_sized run on the calling thread.
 * kiln_{n}_run_parallel and kiln_{n}_run_sized_parallel split each large
 * kernel through a parallel-for the application passes (the shape of
 * pthreadpool's parallelize_1d), so the application keeps control of its
 * threads; the kernels are partitioned for up to {threads} threads. The
 * results are bit-identical to the one-thread call. Define
 * KILN_PTHREAD_POOL before including this header for a small default
 * pool on POSIX threads (kiln_pthread_pool_create / _parallel_for /
 * _destroy; link with -pthread).
 */
",
        target = h.target,
        cpu = h.cpu,
        fma = if h.fma { "yes" } else { "no" },
        tiles_what = match h.tiles {
            TileLevel::Avx512 => "avx512 (assembled 14x32 zmm tiles; needs AVX-512F)",
            TileLevel::Avx2 => "avx2 (assembled 6x16 ymm tiles; needs AVX2 and FMA)",
            TileLevel::F32x4 => "f32x4 (Cranelift 128-bit tiles)",
        },
        threads = h.threads,
    )
}

/// The include guard, includes and the macros: ABI version, target, shapes,
/// sizes and the return codes.
fn defines(h: &HeaderInfo, up: &str) -> String {
    let n = h.name;
    let (_, cpu_include) = cpu_test(h.target, h.isa_flags);
    let guard = format!("KILN_{up}_H");
    let in_elems: usize = h.input.shape.iter().product();
    let out_elems: usize = h.output.shape.iter().product();
    format!(
        "#ifndef {guard}
#define {guard}

#include <stddef.h>
#include <stdint.h>
{cpu_include}
#ifdef __cplusplus
extern \"C\" {{
#endif

#define KILN_{up}_ABI_VERSION {abi}
#define KILN_{up}_TARGET \"{target}\"
#define KILN_{up}_CPU \"{cpu}\"
#define KILN_{up}_TILES \"{tiles}\"
#define KILN_{up}_INPUT_RANK {in_rank}
#define KILN_{up}_INPUT_SHAPE {{ {in_shape} }}
#define KILN_{up}_INPUT_ELEMS {in_elems}
#define KILN_{up}_OUTPUT_RANK {out_rank}
#define KILN_{up}_OUTPUT_SHAPE {{ {out_shape} }}
#define KILN_{up}_OUTPUT_ELEMS {out_elems}
#define KILN_{up}_SCRATCH_BYTES {scratch}
#define KILN_{up}_SCRATCH_ALIGN 64
#define KILN_{up}_THREADS {threads}   /* threads the kernels are partitioned for */
/* What kiln_{n}_run_sized (and kiln_{n}_run_checked) return. */
#define KILN_{up}_OK 0
#define KILN_{up}_ERR_NULL (-1)          /* a pointer argument is NULL */
#define KILN_{up}_ERR_CPU (-2)           /* this CPU lacks the object's features */
#define KILN_{up}_ERR_INPUT_SIZE (-3)    /* input_elems != KILN_{up}_INPUT_ELEMS */
#define KILN_{up}_ERR_OUTPUT_SIZE (-4)   /* output_elems != KILN_{up}_OUTPUT_ELEMS */
#define KILN_{up}_ERR_SCRATCH_SIZE (-5)  /* scratch_bytes < KILN_{up}_SCRATCH_BYTES */
#define KILN_{up}_ERR_ALIGN (-6)         /* scratch is not 64-byte aligned */
#define KILN_{up}_ERR_OVERLAP (-7)       /* output overlaps the input or the scratch */

",
        abi = ABI_VERSION,
        target = h.target,
        cpu = h.cpu,
        tiles = h.tiles,
        in_rank = h.input.shape.len(),
        in_shape = dims(h.input),
        out_rank = h.output.shape.len(),
        out_shape = dims(h.output),
        scratch = h.scratch_bytes,
        threads = h.threads,
    )
}

/// The object's three exported functions, with the parallel-for types the
/// parallel one takes.
fn declarations(h: &HeaderInfo, up: &str) -> String {
    let n = h.name;
    format!(
        "/* UNCHECKED: runs the model on `input` (KILN_{up}_INPUT_ELEMS floats),
 * writing `output` (KILN_{up}_OUTPUT_ELEMS floats), with `scratch` of
 * KILN_{up}_SCRATCH_BYTES bytes, 64-byte aligned. Returns 0. Wrong sizes
 * are out-of-bounds reads and writes, and a CPU without the object's
 * features executes an illegal instruction: prefer kiln_{n}_run_sized. */
int kiln_{n}_run(const float *input, float *output, void *scratch);

{parallel_types}
/* UNCHECKED, like kiln_{n}_run, but each kernel large enough to split is
 * cut into chunks and run as parallel_for(pool, task, context, chunks),
 * which must call task(context, i) once for every i in [0, chunks), on any
 * threads, and return when all calls have returned. parallel_for == NULL
 * runs everything on the calling thread. Same results as kiln_{n}_run, bit
 * for bit. Returns 0. */
int kiln_{n}_run_parallel(const float *input, float *output, void *scratch,
                          kiln_parallel_for_fn parallel_for, void *pool);

/* Bytes of scratch one call needs (== KILN_{up}_SCRATCH_BYTES). */
size_t kiln_{n}_scratch_bytes(void);

",
        parallel_types = PARALLEL_TYPES,
    )
}

/// The inline helpers around the exported functions: the CPU test, the
/// checked entry points and `strerror`.
fn checks(h: &HeaderInfo, up: &str) -> String {
    let n = h.name;
    let (cpu_test, _) = cpu_test(h.target, h.isa_flags);
    format!(
        "/* Whether this CPU has every instruction-set feature the object assumes
 * (CPU level {cpu}). kiln_{n}_run on a CPU without them executes an
 * illegal instruction (SIGILL) or worse; it does not check. */
static inline int kiln_{n}_cpu_supported(void) {{
    return {cpu_test};
}}

/* kiln_{n}_run after checking the CPU only: KILN_{up}_ERR_CPU if
 * kiln_{n}_cpu_supported() is false, else what kiln_{n}_run returns. */
static inline int kiln_{n}_run_checked(const float *input, float *output, void *scratch) {{
    if (!kiln_{n}_cpu_supported()) {{
        return KILN_{up}_ERR_CPU;
    }}
    return kiln_{n}_run(input, output, scratch);
}}

/* The checks of the sized entry points: KILN_{up}_OK when `input` holds
 * exactly KILN_{up}_INPUT_ELEMS floats, `output` room for exactly
 * KILN_{up}_OUTPUT_ELEMS, `scratch` at least KILN_{up}_SCRATCH_BYTES bytes
 * at a 64-byte aligned address, the output overlaps neither of the others,
 * and the CPU has the object's features; else the first KILN_{up}_ERR_*
 * that applies. */
static inline int kiln_{n}_check(const float *input, size_t input_elems,
                                 const float *output, size_t output_elems,
                                 const void *scratch, size_t scratch_bytes) {{
    if (input == NULL || output == NULL || scratch == NULL) {{
        return KILN_{up}_ERR_NULL;
    }}
    if (input_elems != (size_t)KILN_{up}_INPUT_ELEMS) {{
        return KILN_{up}_ERR_INPUT_SIZE;
    }}
    if (output_elems != (size_t)KILN_{up}_OUTPUT_ELEMS) {{
        return KILN_{up}_ERR_OUTPUT_SIZE;
    }}
    if (scratch_bytes < (size_t)KILN_{up}_SCRATCH_BYTES) {{
        return KILN_{up}_ERR_SCRATCH_SIZE;
    }}
    if (((uintptr_t)scratch & 63u) != 0) {{
        return KILN_{up}_ERR_ALIGN;
    }}
    {{
        uintptr_t o = (uintptr_t)output, oe = o + output_elems * sizeof(float);
        uintptr_t i = (uintptr_t)input, ie = i + input_elems * sizeof(float);
        uintptr_t s = (uintptr_t)scratch, se = s + (size_t)KILN_{up}_SCRATCH_BYTES;
        if ((o < ie && i < oe) || (o < se && s < oe)) {{
            return KILN_{up}_ERR_OVERLAP;
        }}
    }}
    if (!kiln_{n}_cpu_supported()) {{
        return KILN_{up}_ERR_CPU;
    }}
    return KILN_{up}_OK;
}}

/* The checked entry point: runs the model on the calling thread when
 * kiln_{n}_check passes; else returns its KILN_{up}_ERR_* code without
 * touching any buffer. */
static inline int kiln_{n}_run_sized(const float *input, size_t input_elems,
                                     float *output, size_t output_elems,
                                     void *scratch, size_t scratch_bytes) {{
    int rc = kiln_{n}_check(input, input_elems, output, output_elems, scratch, scratch_bytes);
    return rc != KILN_{up}_OK ? rc : kiln_{n}_run(input, output, scratch);
}}

/* kiln_{n}_run_sized, with the kernels split through `parallel_for` as
 * kiln_{n}_run_parallel does. */
static inline int kiln_{n}_run_sized_parallel(const float *input, size_t input_elems,
                                              float *output, size_t output_elems,
                                              void *scratch, size_t scratch_bytes,
                                              kiln_parallel_for_fn parallel_for, void *pool) {{
    int rc = kiln_{n}_check(input, input_elems, output, output_elems, scratch, scratch_bytes);
    return rc != KILN_{up}_OK ? rc
                             : kiln_{n}_run_parallel(input, output, scratch, parallel_for, pool);
}}

/* A short English description of a KILN_{up}_* code. */
static inline const char *kiln_{n}_strerror(int code) {{
    switch (code) {{
    case KILN_{up}_OK: return \"ok\";
    case KILN_{up}_ERR_NULL: return \"a buffer pointer is NULL\";
    case KILN_{up}_ERR_CPU: return \"this CPU lacks the object's instruction-set features\";
    case KILN_{up}_ERR_INPUT_SIZE: return \"the input does not have the model's input size\";
    case KILN_{up}_ERR_OUTPUT_SIZE: return \"the output does not have the model's output size\";
    case KILN_{up}_ERR_SCRATCH_SIZE: return \"the scratch buffer is smaller than the model needs\";
    case KILN_{up}_ERR_ALIGN: return \"the scratch buffer is not 64-byte aligned\";
    case KILN_{up}_ERR_OVERLAP: return \"the output overlaps the input or the scratch buffer\";
    default: return \"unknown kiln error code\";
    }}
}}

",
        cpu = h.cpu,
    )
}

/// The optional pthread pool and the closing of the guard.
fn tail(up: &str) -> String {
    let guard = format!("KILN_{up}_H");
    format!(
        "{pthread_pool}
#ifdef __cplusplus
}}
#endif

#endif /* {guard} */
",
        pthread_pool = PTHREAD_POOL,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;

    /// The `cpu_supported` test of an object for `cpu`, and its tile level.
    fn test_for(cpu: &str) -> (String, TileLevel) {
        let t = Target::aot("x86_64-unknown-linux-gnu", cpu, false).unwrap();
        let flags: Vec<String> = crate::target::enabled_flags(&*t.speed)
            .into_iter()
            .map(String::from)
            .collect();
        (cpu_test("x86_64-unknown-linux-gnu", &flags).0, t.tiles)
    }

    /// x86-64-v3 objects call the AVX2 + FMA tiles, so their check must
    /// ask for both (and not for AVX-512); v4 asks for AVX-512F; v2 for
    /// neither and gets no assembled tiles.
    #[test]
    fn x86_64_levels_check_what_their_tiles_need() {
        let (v3, tiles) = test_for("x86-64-v3");
        assert_eq!(tiles, TileLevel::Avx2, "{v3}");
        assert!(v3.contains("__builtin_cpu_supports(\"avx2\")"), "{v3}");
        assert!(v3.contains("__builtin_cpu_supports(\"fma\")"), "{v3}");
        assert!(!v3.contains("avx512"), "{v3}");
        // the preset alone leaves AVX (and so FMA) out
        assert!(v3.contains("__builtin_cpu_supports(\"avx\")"), "{v3}");
        let (v4, tiles) = test_for("x86-64-v4");
        assert_eq!(tiles, TileLevel::Avx512);
        assert!(v4.contains("__builtin_cpu_supports(\"avx512f\")"), "{v4}");
        let (v2, tiles) = test_for("x86-64-v2");
        assert_eq!(tiles, TileLevel::F32x4);
        assert!(!v2.contains("avx2") && !v2.contains("fma"), "{v2}");
    }
}
