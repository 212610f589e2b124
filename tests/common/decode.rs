//! Step-by-step greedy decoding through a KV cache, shared by the CPU and GPU
//! generate tests: the decoded tokens and each step's logits, to compare
//! with `generate` and with the full forward of the decoded sequences.

use ndarray::{s, Array2, Array3, Axis};

/// The two prompts every decoding test starts from.
pub const PROMPTS: [[u32; 5]; 2] = [[3, 17, 5, 39, 0], [12, 1, 30, 8, 21]];

/// [`PROMPTS`] as token vectors.
pub fn prompts() -> Vec<Vec<u32>> {
    PROMPTS.iter().map(|p| p.to_vec()).collect()
}

/// What [`decode_step_by_step`] produced.
pub struct Decoded {
    /// Each prompt followed by its greedy tokens.
    pub seqs: Vec<Vec<u32>>,
    /// The last position's logits (`[batch, vocab]`) of each step.
    pub logits: Vec<Array2<f32>>,
    /// The tokens fed last (the newest token of each sequence, not yet fed).
    pub next_input: Vec<Vec<u32>>,
}

/// Greedy-decodes `steps` tokens after [`prompts`], feeding `forward` (which
/// keeps its KV cache) the prompts first and then one token per sequence per
/// step; ties go to the lowest token id.
pub fn decode_step_by_step(
    steps: usize,
    mut forward: impl FnMut(&[Vec<u32>]) -> Array3<f32>,
) -> Decoded {
    let mut seqs = prompts();
    let mut input = prompts();
    let mut logits = Vec::new();
    for _ in 0..steps {
        let all = forward(&input);
        let last = all.slice(s![.., all.dim().1 - 1, ..]).to_owned();
        input.clear();
        for (b, row) in last.rows().into_iter().enumerate() {
            let next = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
                as u32;
            seqs[b].push(next);
            input.push(vec![next]);
        }
        logits.push(last);
    }
    Decoded {
        seqs,
        logits,
        next_input: input,
    }
}

impl Decoded {
    /// The decoded sequences without their newest token: the input whose full
    /// forward gives every step's logits at once.
    pub fn full_input(&self) -> Vec<Vec<u32>> {
        self.seqs
            .iter()
            .map(|s| s[..s.len() - 1].to_vec())
            .collect()
    }

    /// `(step, cached, full)` for each step: its cached logits and the full
    /// forward's (`full`, of [`Decoded::full_input`]) at the same position,
    /// both `[batch, 1, vocab]`.
    pub fn step_pairs(&self, full: &Array3<f32>) -> Vec<(usize, Array3<f32>, Array3<f32>)> {
        self.logits
            .iter()
            .enumerate()
            .map(|(step, cached)| {
                let pos = PROMPTS[0].len() - 1 + step;
                let expect = full.slice(s![.., pos..pos + 1, ..]).to_owned();
                (step, cached.clone().insert_axis(Axis(1)), expect)
            })
            .collect()
    }
}
