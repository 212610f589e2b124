//! The CPU reference of the block-sparse products (`sdd`, `dsd`, `dds`) equals
//! the dense ndarray product masked by the topology, for f32, f16 and bf16
//! operands; and the `Topology` metadata the ops walk is consistent.

use std::sync::Arc;

use dropless::reference::{dds, dsd, sdd};
use dropless::{BlockSparse, Element, Error, Topology};
use half::{bf16, f16};
use ndarray::{Array2, ArrayView2};
use proptest::collection::vec;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------- helpers

/// A random `[rows, cols]` matrix: magnitudes uniform in [0.01, 1] with a
/// random sign (never zero), rounded to `T`.
fn random_matrix<T: Element>(rng: &mut StdRng, rows: usize, cols: usize) -> Array2<T> {
    Array2::from_shape_simple_fn((rows, cols), || T::from_f32(random_value(rng)))
}

/// One value uniform in ±[0.01, 1].
fn random_value(rng: &mut StdRng) -> f32 {
    let magnitude = rng.gen_range(0.01f32..=1.0);
    if rng.gen::<bool>() {
        magnitude
    } else {
        -magnitude
    }
}

/// A block-sparse matrix on `topology` with random nonzero values.
fn random_sparse<T: Element>(rng: &mut StdRng, topology: &Arc<Topology>) -> BlockSparse<T> {
    let data = (0..topology.num_elements())
        .map(|_| T::from_f32(random_value(rng)))
        .collect();
    BlockSparse::new(Arc::clone(topology), data).unwrap()
}

/// An f32 copy.
fn widen<T: Element>(x: ArrayView2<T>) -> Array2<f32> {
    x.mapv(T::to_f32)
}

/// Elementwise absolute value.
fn abs(x: ArrayView2<f32>) -> Array2<f32> {
    x.mapv(f32::abs)
}

/// Keeps the entries of `x` inside the topology's blocks, zero elsewhere.
fn mask(x: &Array2<f32>, topology: &Topology) -> Array2<f32> {
    let bs = topology.block_size();
    let mut out = Array2::zeros(x.dim());
    for (&r, &c) in topology.row_indices().iter().zip(topology.column_indices()) {
        let (r0, c0) = (r as usize * bs, c as usize * bs);
        let rows = r0..r0 + bs;
        let cols = c0..c0 + bs;
        out.slice_mut(ndarray::s![rows.clone(), cols.clone()])
            .assign(&x.slice(ndarray::s![rows, cols]));
    }
    out
}

/// Asserts `|got - want| <= tol * scale` everywhere, where `scale` is the
/// product of the operands' absolute values (so entries whose scale is zero,
/// outside the topology, must be exactly zero).
fn assert_close(got: &Array2<f32>, want: &Array2<f32>, scale: &Array2<f32>, tol: f32, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}: shape");
    for ((idx, &g), (&w, &s)) in got.indexed_iter().zip(want.iter().zip(scale)) {
        assert!(
            (g - w).abs() <= tol * s,
            "{what}: at {idx:?} got {g}, want {w} (scale {s}, tolerance {tol})"
        );
    }
}

/// A test case: the topology and the free dimension of the dense operand.
#[derive(Debug, Clone)]
struct Case {
    tokens: Vec<usize>,
    ffn_blocks: usize,
    block_size: usize,
    dim: usize,
    seed: u64,
}

impl Case {
    fn topology(&self) -> Arc<Topology> {
        Arc::new(
            Topology::from_tokens_per_expert(
                &self.tokens,
                self.ffn_blocks * self.block_size,
                self.block_size,
            )
            .unwrap(),
        )
    }
}

/// Tokens per expert: general vectors (counts off the block size, experts
/// with zero tokens), everything on one expert, a single token.
fn tokens_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        4 => vec(0usize..=70, 1..=6).prop_map(|mut t| {
            if t.iter().all(|&n| n == 0) {
                t[0] = 1;
            }
            t
        }),
        1 => (1usize..=6, 0usize..6, 1usize..=100).prop_map(|(experts, e, n)| {
            let mut t = vec![0; experts];
            t[e % experts] = n;
            t
        }),
        1 => (1usize..=6, 0usize..6).prop_map(|(experts, e)| {
            let mut t = vec![0; experts];
            t[e % experts] = 1;
            t
        }),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        tokens_strategy(),
        1usize..=3,
        prop_oneof![Just(16usize), Just(32usize)],
        1usize..=40,
        any::<u64>(),
    )
        .prop_map(|(tokens, ffn_blocks, block_size, dim, seed)| Case {
            tokens,
            ffn_blocks,
            block_size,
            dim,
            seed,
        })
}

// ------------------------------------------------------- op vs dense checks

/// `sdd` equals the dense `A · op(B)` masked to the topology's blocks.
fn check_sdd<T: Element>(case: &Case) {
    let topology = case.topology();
    let mut rng = StdRng::seed_from_u64(case.seed);
    let (rows, cols, k) = (topology.rows(), topology.cols(), case.dim);
    let tol = T::DTYPE.rel_tolerance();
    let a = random_matrix::<T>(&mut rng, rows, k);
    for trans_b in [false, true] {
        let b = if trans_b {
            random_matrix::<T>(&mut rng, cols, k)
        } else {
            random_matrix::<T>(&mut rng, k, cols)
        };
        let got = sdd(a.view(), b.view(), trans_b, &topology).unwrap();
        assert_eq!(got.topology(), &topology);
        let (a32, b32) = (widen(a.view()), widen(b.view()));
        let b_op = if trans_b { b32.t() } else { b32.view() };
        let want = mask(&a32.dot(&b_op), &topology);
        let scale = mask(&abs(a32.view()).dot(&abs(b_op)), &topology);
        let what = format!("sdd<{}> trans_b={trans_b} {case:?}", T::DTYPE);
        assert_close(&widen(got.to_dense().view()), &want, &scale, tol, &what);
    }
}

/// `dsd` equals the dense `op(S) · B` of the densified sparse operand.
fn check_dsd<T: Element>(case: &Case) {
    let topology = case.topology();
    let mut rng = StdRng::seed_from_u64(case.seed);
    let tol = T::DTYPE.rel_tolerance();
    let s = random_sparse::<T>(&mut rng, &topology);
    let s32 = widen(s.to_dense().view());
    for transposed in [false, true] {
        let view = if transposed { s.t() } else { s.view() };
        let (m, n) = view.dim();
        let b = random_matrix::<T>(&mut rng, n, case.dim);
        let got = dsd(view, b.view()).unwrap();
        let s_op = if transposed { s32.t() } else { s32.view() };
        assert_eq!(s_op.dim(), (m, n));
        let b32 = widen(b.view());
        let want = s_op.dot(&b32);
        let scale = abs(s_op).dot(&abs(b32.view()));
        let what = format!("dsd<{}> transposed={transposed} {case:?}", T::DTYPE);
        assert_close(&widen(got.view()), &want, &scale, tol, &what);
    }
}

/// `dds` equals the dense `A · op(S)` of the densified sparse operand.
fn check_dds<T: Element>(case: &Case) {
    let topology = case.topology();
    let mut rng = StdRng::seed_from_u64(case.seed);
    let tol = T::DTYPE.rel_tolerance();
    let s = random_sparse::<T>(&mut rng, &topology);
    let s32 = widen(s.to_dense().view());
    for transposed in [false, true] {
        let view = if transposed { s.t() } else { s.view() };
        let (k, n) = view.dim();
        let a = random_matrix::<T>(&mut rng, case.dim, k);
        let got = dds(a.view(), view).unwrap();
        let s_op = if transposed { s32.t() } else { s32.view() };
        assert_eq!(s_op.dim(), (k, n));
        let a32 = widen(a.view());
        let want = a32.dot(&s_op);
        let scale = abs(a32.view()).dot(&abs(s_op));
        let what = format!("dds<{}> transposed={transposed} {case:?}", T::DTYPE);
        assert_close(&widen(got.view()), &want, &scale, tol, &what);
    }
}

/// Runs `check` for f32, f16 and bf16 operands.
macro_rules! all_dtypes {
    ($check:ident, $case:expr) => {{
        $check::<f32>($case);
        $check::<f16>($case);
        $check::<bf16>($case);
    }};
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn sdd_equals_masked_dense_product(case in case_strategy()) {
        all_dtypes!(check_sdd, &case);
    }

    #[test]
    fn dsd_equals_dense_product(case in case_strategy()) {
        all_dtypes!(check_dsd, &case);
    }

    #[test]
    fn dds_equals_dense_product(case in case_strategy()) {
        all_dtypes!(check_dds, &case);
    }
}

/// Fixed cases at the default block size 128.
fn block_128_cases() -> Vec<Case> {
    vec![
        Case {
            tokens: vec![130, 0, 1, 256],
            ffn_blocks: 2,
            block_size: 128,
            dim: 24,
            seed: 1,
        },
        Case {
            tokens: vec![1],
            ffn_blocks: 1,
            block_size: 128,
            dim: 7,
            seed: 2,
        },
        Case {
            tokens: vec![0, 0, 300],
            ffn_blocks: 1,
            block_size: 128,
            dim: 16,
            seed: 3,
        },
    ]
}

#[test]
fn sdd_at_block_size_128() {
    for case in &block_128_cases() {
        all_dtypes!(check_sdd, case);
    }
}

#[test]
fn dsd_at_block_size_128() {
    for case in &block_128_cases() {
        all_dtypes!(check_dsd, case);
    }
}

#[test]
fn dds_at_block_size_128() {
    for case in &block_128_cases() {
        all_dtypes!(check_dds, case);
    }
}

// ------------------------------------------------------------ bad inputs

fn small_topology() -> Arc<Topology> {
    // 2 + 1 block rows, 2 experts x 2 block columns of 16.
    Arc::new(Topology::from_tokens_per_expert(&[20, 5], 32, 16).unwrap())
}

fn assert_shape_mismatch<T: std::fmt::Debug>(result: dropless::Result<T>, op: &str, found: &str) {
    match result {
        Err(Error::ShapeMismatch { op: o, message }) => {
            assert_eq!(o, op);
            assert!(
                message.contains(found),
                "message {message:?} should name the found shape {found}"
            );
        }
        other => panic!("expected ShapeMismatch from {op}, got {other:?}"),
    }
}

#[test]
fn sdd_rejects_mismatched_shapes() {
    let topology = small_topology();
    let (rows, cols) = (topology.rows(), topology.cols());
    assert_eq!((rows, cols), (48, 64));
    let ones = |r, c| Array2::<f32>::ones((r, c));
    let (a_bad, a) = (ones(rows + 1, 8), ones(rows, 8));
    assert_shape_mismatch(
        sdd(a_bad.view(), ones(8, cols).view(), false, &topology),
        "sdd",
        "(49, 8)",
    );
    assert_shape_mismatch(
        sdd(a.view(), ones(9, cols).view(), false, &topology),
        "sdd",
        "(9, 64)",
    );
    assert_shape_mismatch(
        sdd(a.view(), ones(8, cols - 16).view(), false, &topology),
        "sdd",
        "(8, 48)",
    );
    // With trans_b, B must be [cols, k]; the untransposed shape is wrong.
    assert_shape_mismatch(
        sdd(a.view(), ones(8, cols).view(), true, &topology),
        "sdd",
        "(8, 64)",
    );
    assert!(sdd(a.view(), ones(cols, 8).view(), true, &topology).is_ok());
}

#[test]
fn dsd_rejects_mismatched_shapes() {
    let topology = small_topology();
    let s = BlockSparse::new(Arc::clone(&topology), vec![1.0f32; topology.num_elements()]).unwrap();
    // S is [48, 64]: B needs 64 rows; Sᵀ is [64, 48]: B needs 48 rows.
    let b48 = Array2::<f32>::ones((48, 5));
    let b64 = Array2::<f32>::ones((64, 5));
    assert_shape_mismatch(dsd(s.view(), b48.view()), "dsd", "(48, 5)");
    assert_shape_mismatch(dsd(s.t(), b64.view()), "dsd", "(64, 5)");
    assert_eq!(dsd(s.view(), b64.view()).unwrap().dim(), (48, 5));
    assert_eq!(dsd(s.t(), b48.view()).unwrap().dim(), (64, 5));
}

#[test]
fn dds_rejects_mismatched_shapes() {
    let topology = small_topology();
    let s = BlockSparse::new(Arc::clone(&topology), vec![1.0f32; topology.num_elements()]).unwrap();
    // S is [48, 64]: A needs 48 columns; Sᵀ is [64, 48]: A needs 64 columns.
    let a48 = Array2::<f32>::ones((5, 48));
    let a64 = Array2::<f32>::ones((5, 64));
    assert_shape_mismatch(dds(a64.view(), s.view()), "dds", "(5, 64)");
    assert_shape_mismatch(dds(a48.view(), s.t()), "dds", "(5, 48)");
    assert_eq!(dds(a48.view(), s.view()).unwrap().dim(), (5, 64));
    assert_eq!(dds(a64.view(), s.t()).unwrap().dim(), (5, 48));
}

#[test]
fn empty_inner_dimensions_are_errors() {
    let topology = small_topology();
    let a = Array2::<f32>::ones((topology.rows(), 0));
    let b = Array2::<f32>::ones((0, topology.cols()));
    assert!(matches!(
        sdd(a.view(), b.view(), false, &topology),
        Err(Error::Empty { op: "sdd", .. })
    ));

    // No tokens at all: zero rows, so Sᵀ·B and A·S have an empty inner dimension.
    let empty = Arc::new(Topology::from_tokens_per_expert(&[0, 0], 32, 16).unwrap());
    let s = BlockSparse::new(Arc::clone(&empty), Vec::<f32>::new()).unwrap();
    assert!(matches!(
        dsd(s.t(), Array2::<f32>::ones((0, 3)).view()),
        Err(Error::Empty { op: "dsd", .. })
    ));
    assert!(matches!(
        dds(Array2::<f32>::ones((3, 0)).view(), s.view()),
        Err(Error::Empty { op: "dds", .. })
    ));
}

// --------------------------------------------------------------- topology

#[test]
fn topology_offsets_and_indices() {
    // Experts with 5, 0 and 40 tokens at block size 16, 2 blocks per expert row:
    // 1, 0 and 3 block rows.
    let t = Topology::from_tokens_per_expert(&[5, 0, 40], 32, 16).unwrap();
    assert_eq!((t.rows(), t.cols()), (64, 96));
    assert_eq!((t.block_rows(), t.block_cols(), t.num_blocks()), (4, 6, 8));
    assert_eq!(t.num_elements(), 8 * 16 * 16);
    assert_eq!(t.offsets(), &[0, 2, 4, 6, 8]);
    assert_eq!(t.row_indices(), &[0, 0, 1, 1, 2, 2, 3, 3]);
    assert_eq!(t.column_indices(), &[0, 1, 4, 5, 4, 5, 4, 5]);
    assert_eq!(t.offsets_t(), &[0, 1, 2, 2, 2, 5, 8]);
    assert_eq!(t.column_indices_t(), &[0, 0, 1, 2, 3, 1, 2, 3]);
    assert_eq!(t.block_offsets_t(), &[0, 1, 2, 4, 6, 3, 5, 7]);
    assert_eq!(t.block_at(2, 5), Some(5));
    assert_eq!(t.block_at(0, 4), None);
}

/// Checks every invariant the ops rely on, against the tokens per expert.
fn check_topology(t: &Topology, tokens: &[usize], ffn_blocks: usize) {
    let bs = t.block_size();
    let rows_per_expert: Vec<usize> = tokens.iter().map(|n| n.div_ceil(bs)).collect();
    assert_eq!(t.block_rows(), rows_per_expert.iter().sum::<usize>());
    assert_eq!(t.block_cols(), tokens.len() * ffn_blocks);
    assert_eq!(t.offsets().len(), t.block_rows() + 1);
    assert_eq!(t.offsets_t().len(), t.block_cols() + 1);
    assert_eq!(t.num_blocks(), t.block_rows() * ffn_blocks);
    // Block-diagonal rows: block row r of expert e holds e's column blocks.
    let mut r = 0;
    for (e, &n_rows) in rows_per_expert.iter().enumerate() {
        for _ in 0..n_rows {
            let (lo, hi) = (t.offsets()[r] as usize, t.offsets()[r + 1] as usize);
            assert_eq!(hi - lo, ffn_blocks);
            for (i, b) in (lo..hi).enumerate() {
                assert_eq!(t.row_indices()[b] as usize, r);
                assert_eq!(t.column_indices()[b] as usize, e * ffn_blocks + i);
            }
            r += 1;
        }
    }
    // Transpose metadata: each entry names a stored block of this column,
    // in increasing block row order, and every block appears once.
    let mut seen = vec![false; t.num_blocks()];
    for c in 0..t.block_cols() {
        let (lo, hi) = (t.offsets_t()[c] as usize, t.offsets_t()[c + 1] as usize);
        for i in lo..hi {
            let b = t.block_offsets_t()[i] as usize;
            assert_eq!(t.row_indices()[b], t.column_indices_t()[i]);
            assert_eq!(t.column_indices()[b] as usize, c);
            assert!(!seen[b], "block {b} listed twice in the transpose");
            seen[b] = true;
            if i > lo {
                assert!(t.column_indices_t()[i - 1] < t.column_indices_t()[i]);
            }
        }
    }
    assert!(
        seen.iter().all(|&s| s),
        "a block is missing from the transpose"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn topology_metadata_is_consistent_and_round_trips(
        tokens in tokens_strategy(),
        ffn_blocks in 1usize..=4,
        block_size in prop_oneof![Just(16usize), Just(32), Just(64), Just(128)],
    ) {
        let t = Topology::from_tokens_per_expert(&tokens, ffn_blocks * block_size, block_size)
            .unwrap();
        check_topology(&t, &tokens, ffn_blocks);
        let rebuilt = Topology::from_bcsr(
            t.rows(),
            t.cols(),
            block_size,
            t.offsets().to_vec(),
            t.column_indices().to_vec(),
        )
        .unwrap();
        prop_assert_eq!(rebuilt, t);
    }
}

#[test]
fn topology_from_bcsr_derives_a_general_transpose() {
    // A non-block-diagonal pattern: 3 block rows x 3 block columns.
    let t = Topology::from_bcsr(48, 48, 16, vec![0, 2, 3, 5], vec![0, 2, 1, 0, 2]).unwrap();
    assert_eq!(t.row_indices(), &[0, 0, 1, 2, 2]);
    assert_eq!(t.offsets_t(), &[0, 2, 3, 5]);
    assert_eq!(t.column_indices_t(), &[0, 2, 1, 0, 2]);
    assert_eq!(t.block_offsets_t(), &[0, 3, 2, 1, 4]);
}

#[test]
fn topology_rejects_bad_configurations() {
    assert!(matches!(
        Topology::from_tokens_per_expert(&[4, 4], 0, 16),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        Topology::from_tokens_per_expert(&[4, 4], 24, 16),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        Topology::from_tokens_per_expert(&[4, 4], 48, 24),
        Err(Error::UnsupportedBlockSize { block_size: 24, .. })
    ));
    assert!(matches!(
        Topology::from_tokens_per_expert(&[], 32, 16),
        Err(Error::Empty { .. })
    ));
    let bad_bcsr = [
        // rows not a multiple of the block size
        Topology::from_bcsr(40, 32, 16, vec![0, 1, 2], vec![0, 1]),
        // offsets of the wrong length
        Topology::from_bcsr(32, 32, 16, vec![0, 1], vec![0]),
        // offsets not ending at the block count
        Topology::from_bcsr(32, 32, 16, vec![0, 1, 1], vec![0, 1]),
        // decreasing offsets
        Topology::from_bcsr(48, 32, 16, vec![0, 2, 1, 2], vec![0, 1]),
        // unsorted columns in a row
        Topology::from_bcsr(32, 32, 16, vec![0, 2, 2], vec![1, 0]),
        // column out of range
        Topology::from_bcsr(32, 32, 16, vec![0, 1, 2], vec![0, 2]),
        // negative column
        Topology::from_bcsr(32, 32, 16, vec![0, 1, 2], vec![0, -1]),
    ];
    for (i, result) in bad_bcsr.into_iter().enumerate() {
        assert!(
            matches!(result, Err(Error::InvalidTopology(_))),
            "case {i}: expected InvalidTopology, got {result:?}"
        );
    }
    assert!(matches!(
        Topology::from_bcsr(32, 32, 8, vec![0, 0, 0, 0, 0], vec![]),
        Err(Error::UnsupportedBlockSize { block_size: 8, .. })
    ));
}
