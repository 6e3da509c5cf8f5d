// The SAB recurrence over a chunk of steps, forward and backward, compiled (CPU, float32 and float64).
//
// The same mathematics as the Python path (sab_mips/model/layer.py: ``SABLayer.forward`` and its autograd,
// sab_mips/ops/sparse_attention.py: the fused attention step and its closed-form backward), written as
// one loop over the steps: matrix products go to ATen (BLAS), everything per element or per candidate is
// a plain loop here, so a step costs a dozen calls instead of about a hundred dispatched from Python.
// sab_mips/kernel/compiled.py wraps both functions in one autograd.Function; the tests compare it with
// the Python path in float64 (tests/test_kernel.py).
//
// Shapes: T steps, B batch, H hidden size, G = 4H gates, d key size, C candidates per attention step,
// K = k_top, N0 slots in the memory before the chunk, Nn slots written by the chunk, S attention steps.
// Slot ids count from the start of the memory: id < N0 an old slot (an input), id >= N0 slot id - N0 of
// the chunk's own writes. A candidate id of -1 is padding.
#include <torch/extension.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

namespace py = pybind11;

namespace {

constexpr double NORM_FLOOR = 1e-12;  // as sab_mips/ops/sparse_attention.py: |v| below it divides by it

struct Spec {
  int64_t t0, k_top, k_att, k_trunc, attend_every, count;
  bool cosine, softmax, slot_h_hat, to_state;
  double eps;
};

// a . b over n entries; the pragma lets the compiler vectorise the sum (-fopenmp-simd), which it may not
// reorder on its own
template <typename T>
inline T dot_product(const T* a, const T* b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += a[j] * b[j];
  return acc;
}

// Order of a row's candidates: newest slot first, padding (-1) last; the Python path's canonical order.
inline void sort_ids(int64_t* ids, int64_t n) { std::sort(ids, ids + n, [](int64_t a, int64_t b) { return a > b; }); }

// The sparsifier of one row of C scores (sab_mips/ops/sparsify.py): weights, and for the ReLU rule the
// active entries, the sum S and the column whose score sets delta.
template <typename T>
void sparsify_row(const T* a, const int64_t* ids, int64_t C, const Spec& s, T* w, uint8_t* active, T* total,
                  int64_t* source) {
  std::vector<int64_t> order;
  order.reserve(C);
  for (int64_t c = 0; c < C; ++c) {
    w[c] = 0;
    active[c] = 0;
    if (ids[c] >= 0) order.push_back(c);
  }
  *total = 0;
  *source = 0;
  const int64_t valid = static_cast<int64_t>(order.size());
  if (valid == 0) return;
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return a[x] > a[y]; });
  const int64_t K = s.k_top;
  if (s.softmax) {
    const int64_t n = std::min(K, valid);
    const T top = a[order[0]];
    T sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += std::exp(a[order[j]] - top);
    for (int64_t j = 0; j < n; ++j) {
      w[order[j]] = std::exp(a[order[j]] - top) / sum;
      active[order[j]] = 1;
    }
    return;
  }
  T delta;
  if (valid > K) {
    *source = order[K];
    delta = a[order[K]];
  } else {
    *source = order[valid - 1];
    delta = a[order[valid - 1]] - T(1);  // N <= K: delta = min - 1 (LOW_N_MARGIN)
  }
  T sum = 0;
  for (int64_t j = 0; j < valid; ++j) {
    const int64_t c = order[j];
    if (a[c] > delta) {
      active[c] = 1;
      sum += a[c] - delta;
    }
  }
  *total = sum;
  for (int64_t c = 0; c < C; ++c)
    if (active[c]) w[c] = (a[c] - delta) / (sum + T(s.eps));
}

// v / max(|v|, floor) in place; returns |v|.
template <typename T>
T normalise(T* v, int64_t n) {
  const T norm = std::sqrt(dot_product(v, v, n));
  const T div = std::max(norm, T(NORM_FLOOR));
  for (int64_t j = 0; j < n; ++j) v[j] /= div;
  return norm;
}

// The gradient of v from that of v / max(|v|, floor): (g - u (u.g)) / |v|, or g / floor where clamped.
template <typename T>
void unit_backward(const T* g, const T* u, T norm, int64_t n, T* out) {
  if (norm < T(NORM_FLOOR)) {
    for (int64_t j = 0; j < n; ++j) out[j] = g[j] / T(NORM_FLOOR);
    return;
  }
  const T dot = dot_product(u, g, n);
  for (int64_t j = 0; j < n; ++j) out[j] = (g[j] - u[j] * dot) / norm;
}

int64_t count_steps(int64_t t0, int64_t T, int64_t every, int64_t offset) {
  int64_t n = 0;
  for (int64_t t = t0; t < t0 + T; ++t) n += ((t + offset) % every == 0);
  return n;
}

// The best `size` (score, id) pairs offered, best first; a tie goes to the larger id (the newer slot).
template <typename T>
struct TopC {
  explicit TopC(int64_t size) : size(size) { best.reserve(size); }
  void offer(T score, int64_t id) {
    if (static_cast<int64_t>(best.size()) == size) {
      const auto& last = best.back();
      if (!(score > last.first || (score == last.first && id > last.second))) return;
      best.pop_back();
    }
    auto at = std::upper_bound(best.begin(), best.end(), std::make_pair(score, id),
                               [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second > b.second); });
    best.insert(at, {score, id});
  }
  void write(int64_t* ids) const {  // the ids, then -1 up to the row's width (set by the caller)
    for (size_t j = 0; j < best.size(); ++j) ids[j] = best[j].second;
  }
  int64_t size;
  std::vector<std::pair<T, int64_t>> best;
};

template <typename T>
const T* slot_row(const at::Tensor& old_values, const at::Tensor& new_values, int64_t b, int64_t id, int64_t N0) {
  if (id < N0) return old_values.data_ptr<T>() + b * old_values.stride(0) + id * old_values.stride(1);
  return new_values.data_ptr<T>() + (b * new_values.size(1) + (id - N0)) * new_values.size(2);
}

// The forward's saved tensors, in the order the backward reads them.
enum Saved { FEATURES, NEW_VALUES, NEW_KEYS, NEW_KEY_NORMS, IDS, WEIGHTS, ACTS, CS, TANH_CS, ACTIVE, TOTALS, SOURCES,
             QUERIES, QUERY_NORMS, FOLDED, CAND_KEYS, CAND_NORMS, ATT_STEP, WRITE_STEP, ATT_H_HAT, XH, SAVED_COUNT };

template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& bias,
                                     const at::Tensor& query_weight,
                                     const at::Tensor& key_weight, const at::Tensor& temperature,
                                     const at::Tensor& old_values, const std::optional<at::Tensor>& old_keys,
                                     const std::optional<at::Tensor>& replay, const py::object& search_fn,
                                     const py::object& add_fn, const Spec& s) {
  const int64_t L = x.size(0), B = x.size(1), I = x.size(2), G = w_hh.size(0), H = G / 4;
  const int64_t d = key_weight.size(0), C = s.count, N0 = old_values.size(1);
  const auto opts = x.options();
  const auto long_opts = opts.dtype(at::kLong);
  const int64_t Nmax = count_steps(s.t0, L, s.k_att, 1), Smax = count_steps(s.t0, L, s.attend_every, 0);
  if (replay.has_value())
    TORCH_CHECK(replay->size(1) == B && replay->size(2) == C, "replay holds candidate ids of shape ", replay->sizes(),
                "; this pass needs (S, ", B, ", ", C, ")");

  at::Tensor features = at::empty({B, L, 2 * H}, opts);  // [h_t ; s_t], batch first as the head reads them
  at::Tensor att_h_hat = at::empty({Smax, B, H}, opts);  // h_hat of each attention step
  at::Tensor gates = at::empty({B, G}, opts);
  at::Tensor acts = at::empty({L, B, G}, opts);  // gate activations i, f, g, o
  at::Tensor cs = at::empty({L, B, H}, opts), tanh_cs = at::empty({L, B, H}, opts);
  at::Tensor new_values = at::empty({B, Nmax, H}, opts);
  at::Tensor new_keys = at::empty({B, d, Nmax}, opts);  // by column, as the exact index stores them
  at::Tensor new_key_norms = at::empty({B, Nmax}, opts);  // cosine: |W_k m| of each new slot
  at::Tensor ids = at::full({Smax, B, C}, -1, long_opts);
  at::Tensor weights = at::zeros({Smax, B, C}, opts);
  at::Tensor scores_out = at::zeros({Smax, B, C}, opts);  // the exact scores of the candidates
  at::Tensor active = at::zeros({Smax, B, C}, opts.dtype(at::kByte));
  at::Tensor totals = at::zeros({Smax, B}, opts);
  at::Tensor sources = at::zeros({Smax, B}, long_opts);
  at::Tensor queries = at::empty({Smax, B, d}, opts);  // dot: q; cosine: the unit query before tau
  at::Tensor query_norms = at::empty({Smax, B}, opts);  // cosine: |W_q h_hat|
  at::Tensor folded = at::empty({Smax, B, s.cosine ? 0 : H}, opts);  // dot: q~ = q W_k
  at::Tensor cand_keys = at::empty({Smax, B, C, s.cosine ? d : 0}, opts);  // cosine: the candidates' unit keys
  at::Tensor cand_norms = at::empty({Smax, B, C}, opts);
  at::Tensor att_step = at::empty({Smax}, long_opts), write_step = at::empty({Nmax}, long_opts);
  const T tau = s.cosine ? temperature.item<T>() : T(1);
  const bool exact_search = old_keys.has_value() && !replay.has_value();
  double search_seconds = 0;

  at::Tensor h = h0.clone(), c = c0.clone(), h_hat = at::empty({B, H}, opts);
  at::Tensor cand = at::empty({B, C, H}, opts), q = at::empty({B, d}, opts), key = at::empty({B, d}, opts);
  at::Tensor query_t = query_weight.t().contiguous(), key_t = key_weight.t().contiguous();
  // [x_t ; h_{t-1}] of every step (saved: the weight gradients are one product over all steps), and the
  // weights [W_ih W_hh]ᵀ (I + H, G): one product per step; a contiguous right factor is the faster one here
  at::Tensor xh = at::empty({L, B, I + H}, opts);
  at::Tensor weights_t = at::cat({w_ih, w_hh}, 1).t().contiguous();
  T* xh_p = xh.data_ptr<T>();
  const T* x_p = x.data_ptr<T>();
  at::Tensor old_rows = at::empty({B * C, H}, opts);
  T* features_p = features.data_ptr<T>();
  T* acts_p = acts.data_ptr<T>();
  T* cs_p = cs.data_ptr<T>();
  T* tcs_p = tanh_cs.data_ptr<T>();
  T* newv_p = new_values.data_ptr<T>();
  T* newk_p = new_keys.data_ptr<T>();
  T* newn_p = new_key_norms.data_ptr<T>();
  int64_t* ids_p = ids.data_ptr<int64_t>();
  T* weights_p = weights.data_ptr<T>();
  uint8_t* active_p = active.data_ptr<uint8_t>();
  T* totals_p = totals.data_ptr<T>();
  int64_t* sources_p = sources.data_ptr<int64_t>();
  T* queries_p = queries.data_ptr<T>();
  T* qnorm_p = query_norms.data_ptr<T>();
  T* cand_keys_p = cand_keys.data_ptr<T>();
  T* cand_norms_p = cand_norms.data_ptr<T>();
  int64_t* att_p = att_step.data_ptr<int64_t>();
  int64_t* write_p = write_step.data_ptr<int64_t>();
  T* hp = h.data_ptr<T>();
  T* cp = c.data_ptr<T>();
  T* hh = h_hat.data_ptr<T>();
  T* cand_p = cand.data_ptr<T>();
  T* q_p = q.data_ptr<T>();
  std::vector<int64_t> old_at;  // (b C + k) of the candidates that are old slots (cosine: keys to project)
  std::vector<T> new_scores(std::max<int64_t>(Nmax, 1));
  int64_t n = 0, S = 0;  // slots written, attention steps done
  for (int64_t i = 0; i < L; ++i) {
    const int64_t t = s.t0 + i;
    T* xh_i = xh_p + i * B * (I + H);
    for (int64_t b = 0; b < B; ++b) {
      std::copy(x_p + (i * B + b) * I, x_p + (i * B + b + 1) * I, xh_i + b * (I + H));
      std::copy(hp + b * H, hp + (b + 1) * H, xh_i + b * (I + H) + I);
    }
    at::addmm_out(gates, bias, xh[i], weights_t);
    at::Tensor act = acts[i];
    at::sigmoid_out(act, gates);
    at::Tensor g_part = act.narrow(1, 2 * H, H);
    at::tanh_out(g_part, gates.narrow(1, 2 * H, H));
    T* a_p = acts_p + i * B * G;
    T* c_i = cs_p + i * B * H;
    for (int64_t b = 0; b < B; ++b) {
      const T* a = a_p + b * G;
      T* cb = cp + b * H;
      for (int64_t j = 0; j < H; ++j) cb[j] = a[H + j] * cb[j] + a[j] * a[2 * H + j];
    }
    std::copy(cp, cp + B * H, c_i);
    at::Tensor tc = tanh_cs[i];
    at::tanh_out(tc, c);
    const T* tc_p = tcs_p + i * B * H;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) hh[b * H + j] = a_p[b * G + 3 * H + j] * tc_p[b * H + j];
    std::copy(hh, hh + B * H, hp);  // h = h_hat (+ s below)
    T* feat = features_p + i * 2 * H;  // row b at feat + b * L * 2H
    const int64_t frow = L * 2 * H;
    const int64_t N = N0 + n;
    bool attended = false;
    if (t % s.attend_every == 0 && N > 0) {
      attended = true;
      const int64_t st = S++;
      att_p[st] = i;
      std::copy(hh, hh + B * H, att_h_hat.data_ptr<T>() + st * B * H);
      T* query_st = queries_p + st * B * d;
      at::mm_out(q, h_hat, query_t);
      if (s.cosine) {
        for (int64_t b = 0; b < B; ++b) qnorm_p[st * B + b] = normalise(q_p + b * d, d);
        std::copy(q_p, q_p + B * d, query_st);
        for (int64_t j = 0; j < B * d; ++j) q_p[j] *= tau;
      } else {
        std::copy(q_p, q_p + B * d, query_st);
        at::Tensor fold = folded[st];
        at::mm_out(fold, q, key_weight);
      }
      int64_t* idp = ids_p + st * B * C;
      if (replay.has_value()) {
        TORCH_CHECK(st < replay->size(0), "replay holds ", replay->size(0), " attention steps; this pass needs more");
        ids[st].copy_((*replay)[st]);
      } else if (exact_search) {
        // exact top C: the old slots' scores in one batched product over the index's keys (a scan bound by
        // memory bandwidth once the memory is large), the chunk's own slots' here; ties go to the newer slot
        const auto start = std::chrono::steady_clock::now();
        at::Tensor old_scores;
        if (N0 > 0) old_scores = at::bmm(q.unsqueeze(1), old_keys->transpose(1, 2)).squeeze(1).contiguous();
        const T* os = N0 > 0 ? old_scores.data_ptr<T>() : nullptr;
        for (int64_t b = 0; b < B; ++b) {
          TopC<T> top(std::min(C, N));
          for (int64_t j = 0; j < N0; ++j) top.offer(os[b * N0 + j], j);
          if (n > 0) {
            std::fill(new_scores.begin(), new_scores.begin() + n, T(0));
            for (int64_t j = 0; j < d; ++j) {
              const T qj = q_p[b * d + j];
              const T* kj = newk_p + (b * d + j) * Nmax;
#pragma omp simd
              for (int64_t m = 0; m < n; ++m) new_scores[m] += qj * kj[m];
            }
            for (int64_t m = 0; m < n; ++m) top.offer(new_scores[m], N0 + m);
          }
          top.write(idp + b * C);
          sort_ids(idp + b * C, C);
        }
        search_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      } else {
        at::Tensor found = search_fn(q).cast<at::Tensor>();
        TORCH_CHECK(found.dim() == 2 && found.size(0) == B && found.size(1) == C,
                    "the index returned ids of shape ", found.sizes(), ", expected (", B, ", ", C, ")");
        ids[st].copy_(found);
      }
      // gather the candidates (B, C, H); padding reads as zeros and takes no part
      old_at.clear();
      for (int64_t r = 0; r < B * C; ++r) {
        const int64_t b = r / C, id = idp[r];
        TORCH_CHECK(id < N, "candidate slot ", id, " does not exist (", N, " slots)");
        T* dst = cand_p + r * H;
        if (id < 0) {
          std::fill(dst, dst + H, T(0));
        } else {
          const T* src = slot_row<T>(old_values, new_values, b, id, N0);
          std::copy(src, src + H, dst);
          if (id < N0) old_at.push_back(r);
        }
      }
      T* wp = weights_p + st * B * C;
      for (int64_t b = 0; b < B; ++b) {
        if (s.cosine) {
          // unit keys: the chunk's own slots' were made when they were written; old slots' are projected
          T* keys = cand_keys_p + (st * B + b) * C * d;
          T* norms = cand_norms_p + (st * B + b) * C;
          for (int64_t k = 0; k < C; ++k) {
            const int64_t id = idp[b * C + k];
            if (id >= N0) {
              const int64_t slot = id - N0;
              for (int64_t j = 0; j < d; ++j) keys[k * d + j] = newk_p[(b * d + j) * Nmax + slot];
              norms[k] = newn_p[b * Nmax + slot];
            } else {
              std::fill(keys + k * d, keys + (k + 1) * d, T(0));
              norms[k] = 0;
            }
          }
        }
      }
      if (s.cosine && !old_at.empty()) {
        const int64_t M = static_cast<int64_t>(old_at.size());
        T* rows = old_rows.data_ptr<T>();
        for (int64_t m = 0; m < M; ++m) std::copy(cand_p + old_at[m] * H, cand_p + (old_at[m] + 1) * H, rows + m * H);
        at::Tensor projected = at::mm(old_rows.narrow(0, 0, M), key_t);  // (M, d)
        T* pp = projected.data_ptr<T>();
        for (int64_t m = 0; m < M; ++m) {
          const int64_t r = old_at[m];
          T* dst = cand_keys_p + (st * B * C + r) * d;
          std::copy(pp + m * d, pp + (m + 1) * d, dst);
          cand_norms_p[st * B * C + r] = normalise(dst, d);
        }
      }
      const T* fold_p = s.cosine ? nullptr : folded.data_ptr<T>() + st * B * H;
      for (int64_t b = 0; b < B; ++b) {
        T* sp = scores_out.data_ptr<T>() + (st * B + b) * C;
        for (int64_t k = 0; k < C; ++k) {
          const int64_t r = b * C + k;
          sp[k] = s.cosine ? dot_product(cand_keys_p + (st * B * C + r) * d, q_p + b * d, d)
                           : dot_product(cand_p + r * H, fold_p + b * H, H);
        }
        sparsify_row<T>(sp, idp + b * C, C, s, wp + b * C, active_p + (st * B + b) * C, totals_p + st * B + b,
                        sources_p + st * B + b);
        T* summary = feat + b * frow + H;
        std::fill(summary, summary + H, T(0));
        for (int64_t k = 0; k < C; ++k) {
          const T wk = wp[b * C + k];
          if (wk == T(0)) continue;
          const T* m = cand_p + (b * C + k) * H;
          for (int64_t j = 0; j < H; ++j) summary[j] += wk * m[j];
        }
        if (s.to_state)
          for (int64_t j = 0; j < H; ++j) hp[b * H + j] += summary[j];
      }
    }
    for (int64_t b = 0; b < B; ++b) {  // features [h_t ; s_t]
      std::copy(hp + b * H, hp + (b + 1) * H, feat + b * frow);
      if (!attended) std::fill(feat + b * frow + H, feat + b * frow + 2 * H, T(0));
    }
    if ((t + 1) % s.k_att == 0) {  // the slot write
      const at::Tensor& value = s.slot_h_hat ? h_hat : h;
      const T* v = value.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) std::copy(v + b * H, v + (b + 1) * H, newv_p + (b * Nmax + n) * H);
      at::mm_out(key, value, key_t);  // (B, d)
      T* kp = key.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) {
        if (s.cosine) newn_p[b * Nmax + n] = normalise(kp + b * d, d);
        for (int64_t j = 0; j < d; ++j) newk_p[(b * d + j) * Nmax + n] = kp[b * d + j];
      }
      write_p[n] = i;
      ++n;
      if (!add_fn.is_none()) add_fn(key.unsqueeze(1).clone());
    }
  }
  at::Tensor seconds = at::full({}, search_seconds, opts.dtype(at::kDouble));
  at::Tensor keys_out = new_keys.narrow(2, 0, n).transpose(1, 2).contiguous();
  return {features, h, c, new_values.narrow(1, 0, n), keys_out, ids.narrow(0, 0, S), weights.narrow(0, 0, S),
          scores_out.narrow(0, 0, S), seconds,
          // the saved tensors after the first two (features, new values) and the next two (keys, ids)
          new_key_norms.narrow(1, 0, n).contiguous(), acts, cs, tanh_cs, active.narrow(0, 0, S),
          totals.narrow(0, 0, S), sources.narrow(0, 0, S), queries.narrow(0, 0, S), query_norms.narrow(0, 0, S),
          folded.narrow(0, 0, S), cand_keys.narrow(0, 0, S), cand_norms.narrow(0, 0, S), att_step.narrow(0, 0, S),
          write_step.narrow(0, 0, n), att_h_hat.narrow(0, 0, S), xh};
}

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad_features, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                      const at::Tensor& grad_new_values, const at::Tensor& c0, const at::Tensor& w_ih,
                                      const at::Tensor& w_hh, bool x_grad, const at::Tensor& query_weight,
                                      const at::Tensor& key_weight, const at::Tensor& temperature,
                                      const at::Tensor& old_values, const std::vector<at::Tensor>& saved,
                                      const std::optional<at::Tensor>& old_grad, const Spec& s) {
  const at::Tensor &features = saved[FEATURES], &new_values = saved[NEW_VALUES], &ids = saved[IDS];
  const at::Tensor &acts = saved[ACTS], &cs = saved[CS], &tanh_cs = saved[TANH_CS];
  const int64_t L = acts.size(0), B = acts.size(1), G = acts.size(2), H = G / 4;
  const int64_t d = key_weight.size(0), C = s.count, N0 = old_values.size(1);
  const int64_t S = ids.size(0), Nn = new_values.size(1);
  const auto opts = acts.options();
  const T tau = s.cosine ? temperature.item<T>() : T(1);
  const T eps = T(s.eps);

  at::Tensor grad_gates = at::empty({L, B, G}, opts);
  at::Tensor dh_carry = grad_h.clone(), dc_carry = grad_c.clone();
  at::Tensor slot_grads = grad_new_values.clone();  // (B, Nn, H): gradients of the chunk's own slots
  at::Tensor unit_grads = at::zeros({B, Nn, s.cosine ? d : 0}, opts);  // cosine: of their unit keys
  at::Tensor key_grads = at::zeros({B, Nn, s.cosine ? d : 0}, opts);  // cosine: of their keys W_k m
  at::Tensor grad_query_weight = at::zeros_like(query_weight), grad_key_weight = at::zeros_like(key_weight);
  T grad_tau = 0;
  at::Tensor g_query = at::zeros({S, B, s.cosine ? d : H}, opts);  // dot: g of q~; cosine: g of W_q h_hat
  at::Tensor dh_hat = at::empty({B, H}, opts), ds = at::empty({B, H}, opts);
  at::Tensor g_cand = at::empty({B * C, H}, opts), cand = at::empty({B * C, H}, opts);
  at::Tensor old_key_grads = at::empty({B * C, s.cosine ? d : 0}, opts), old_rows = at::empty({B * C, H}, opts);
  at::Tensor write_key_grad = at::empty({B, d}, opts), write_grad = at::empty({B, H}, opts);
  at::Tensor query_to_state;  // dot: W_k^T W_q' (H, H), the map from the gradient of q~ to that of h_hat
  if (!s.cosine) query_to_state = at::mm(key_weight.t(), query_weight);
  const int64_t* ids_p = ids.data_ptr<int64_t>();
  const int64_t* asp = saved[ATT_STEP].data_ptr<int64_t>();
  const int64_t* wsp = saved[WRITE_STEP].data_ptr<int64_t>();
  const T* gf_p = grad_features.data_ptr<T>();
  const T* acts_p = acts.data_ptr<T>();
  const T* cs_p = cs.data_ptr<T>();
  const T* tcs_p = tanh_cs.data_ptr<T>();
  const T* c0_p = c0.data_ptr<T>();
  const T* weights_p = saved[WEIGHTS].data_ptr<T>();
  const uint8_t* active_p = saved[ACTIVE].data_ptr<uint8_t>();
  const T* totals_p = saved[TOTALS].data_ptr<T>();
  const int64_t* sources_p = saved[SOURCES].data_ptr<int64_t>();
  const T* queries_p = saved[QUERIES].data_ptr<T>();
  const T* qnorm_p = saved[QUERY_NORMS].data_ptr<T>();
  const T* folded_p = s.cosine ? nullptr : saved[FOLDED].data_ptr<T>();
  const T* cand_keys_p = s.cosine ? saved[CAND_KEYS].data_ptr<T>() : nullptr;
  const T* cand_norms_p = saved[CAND_NORMS].data_ptr<T>();
  const T* newk_p = saved[NEW_KEYS].data_ptr<T>();  // (B, Nn, d)
  const T* newn_p = saved[NEW_KEY_NORMS].data_ptr<T>();  // (B, Nn)
  T* gg_p = grad_gates.data_ptr<T>();
  T* dhp = dh_carry.data_ptr<T>();
  T* dcp = dc_carry.data_ptr<T>();
  T* dhh = dh_hat.data_ptr<T>();
  T* dsp = ds.data_ptr<T>();
  T* cand_p = cand.data_ptr<T>();
  T* gc = g_cand.data_ptr<T>();
  T* sgp = slot_grads.data_ptr<T>();
  T* ugp = unit_grads.data_ptr<T>();
  T* kgp = key_grads.data_ptr<T>();
  T* gq_all = g_query.data_ptr<T>();
  T* ogp = old_grad.has_value() ? old_grad->data_ptr<T>() : nullptr;
  std::vector<T> g_w(C), g_a(C), tmp(std::max(d, H)), g_unit(d);
  std::vector<int64_t> old_at;
  int64_t st = S - 1, w = Nn - 1;
  for (int64_t i = L - 1; i >= 0; --i) {
    const int64_t t = s.t0 + i;
    const T* gf = gf_p + i * 2 * H;  // row b at gf + b * L * 2H
    const int64_t frow = L * 2 * H;
    for (int64_t b = 0; b < B; ++b) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dhp[b * H + j] += gf[b * frow + j];  // dL/dh_t
    }
    std::fill(dhh, dhh + B * H, T(0));
    if (w >= 0 && wsp[w] == i) {  // the slot written at this step takes what its readers deposited
      T* wg = write_grad.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) std::copy(sgp + (b * Nn + w) * H, sgp + (b * Nn + w + 1) * H, wg + b * H);
      if (s.cosine) {  // and, through its key k = W_k m, what reached its unit key
        T* kg = write_key_grad.data_ptr<T>();
        for (int64_t b = 0; b < B; ++b) {
          unit_backward<T>(ugp + (b * Nn + w) * d, newk_p + (b * Nn + w) * d, newn_p[b * Nn + w], d, kg + b * d);
          std::copy(kg + b * d, kg + (b + 1) * d, kgp + (b * Nn + w) * d);
        }
        write_grad.addmm_(write_key_grad, key_weight);
      }
      T* target = s.slot_h_hat ? dhh : dhp;
      for (int64_t j = 0; j < B * H; ++j) target[j] += wg[j];
      --w;
    }
#pragma omp simd
    for (int64_t j = 0; j < B * H; ++j) dhh[j] += dhp[j];  // h = h_hat (+ s)
    if (st >= 0 && asp[st] == i) {
      // the attention step's backward (sab_mips/ops/sparse_attention.py, attend_backward)
      const T to_state = s.to_state ? T(1) : T(0);
      for (int64_t b = 0; b < B; ++b) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) dsp[b * H + j] = gf[b * frow + H + j] + to_state * dhp[b * H + j];
      }
      const int64_t* idp = ids_p + st * B * C;
      old_at.clear();
      for (int64_t r = 0; r < B * C; ++r) {
        const int64_t id = idp[r];
        T* dst = cand_p + r * H;
        if (id < 0) {
          std::fill(dst, dst + H, T(0));
        } else {
          const T* src = slot_row<T>(old_values, new_values, r / C, id, N0);
          std::copy(src, src + H, dst);
          if (id < N0) old_at.push_back(r);
        }
      }
      const T* wp = weights_p + st * B * C;
      const uint8_t* actp = active_p + st * B * C;
      T* gq = gq_all + st * B * (s.cosine ? d : H);
      const T* qp = queries_p + st * B * d;
      for (int64_t b = 0; b < B; ++b) {
        const T* gsum = dsp + b * H;
        T mean = 0;
        for (int64_t k = 0; k < C; ++k) {
          g_w[k] = dot_product(cand_p + (b * C + k) * H, gsum, H);
          mean += g_w[k] * wp[b * C + k];
        }
        for (int64_t k = 0; k < C; ++k) {
          const T centred = g_w[k] - mean;
          if (s.softmax) g_a[k] = wp[b * C + k] * centred;
          else g_a[k] = actp[b * C + k] ? centred / (totals_p[st * B + b] + eps) : T(0);
        }
        if (!s.softmax) {
          T sum = 0;
          for (int64_t k = 0; k < C; ++k) sum += g_a[k];
          g_a[sources_p[st * B + b]] -= sum;  // delta is the (K+1)-th score
        }
        for (int64_t k = 0; k < C; ++k) {
          T* g = gc + (b * C + k) * H;
          const T wk = wp[b * C + k];
          for (int64_t j = 0; j < H; ++j) g[j] = wk * gsum[j];
          if (idp[b * C + k] < 0) g_a[k] = 0;
        }
        if (s.cosine) {
          // scores a_k = q . k^_k, q = tau u^: g_q = sum g_a k^; g_k^_k = g_a q
          T* gqb = gq + b * d;
          std::fill(gqb, gqb + d, T(0));
          for (int64_t k = 0; k < C; ++k) {
            const int64_t r = b * C + k, id = idp[r];
            if (id < 0) continue;
            const T* uk = cand_keys_p + (st * B * C + r) * d;
            for (int64_t j = 0; j < d; ++j) {
              gqb[j] += g_a[k] * uk[j];
              g_unit[j] = g_a[k] * tau * qp[b * d + j];
            }
            if (id >= N0) {  // the chunk's own slot: taken through its key when its write runs backward
              T* ug = ugp + (b * Nn + (id - N0)) * d;
              for (int64_t j = 0; j < d; ++j) ug[j] += g_unit[j];
            } else {
              unit_backward<T>(g_unit.data(), uk, cand_norms_p[st * B * C + r], d, tmp.data());
              std::copy(tmp.data(), tmp.data() + d, old_key_grads.data_ptr<T>() + r * d);
            }
          }
          // q = tau u^ (u^ = the unit query): g_tau += g_q . u^; g_u^ = tau g_q; then through the norm
          grad_tau += dot_product(gqb, qp + b * d, d);
          for (int64_t j = 0; j < d; ++j) tmp[j] = tau * gqb[j];
          unit_backward<T>(tmp.data(), qp + b * d, qnorm_p[st * B + b], d, gqb);
        } else {
          // scores a_k = q~ . m_k: g_m_k += g_a q~; g_q~ = sum g_a m_k
          T* gqb = gq + b * H;
          std::fill(gqb, gqb + H, T(0));
          const T* fp = folded_p + (st * B + b) * H;
          for (int64_t k = 0; k < C; ++k) {
            const T* m = cand_p + (b * C + k) * H;
            T* g = gc + (b * C + k) * H;
            for (int64_t j = 0; j < H; ++j) {
              g[j] += g_a[k] * fp[j];
              gqb[j] += g_a[k] * m[j];
            }
          }
        }
      }
      if (s.cosine) {
        at::Tensor gq_t = g_query[st];
        dh_hat.addmm_(gq_t, query_weight);  // u = h_hat W_q^T
        if (!old_at.empty()) {  // old slots' keys k = W_k m: g_m += g_k W_k; g_W_k += g_k^T m
          const int64_t M = static_cast<int64_t>(old_at.size());
          T* okg = old_key_grads.data_ptr<T>();
          T* rows = old_rows.data_ptr<T>();
          at::Tensor packed = at::empty({M, d}, opts);
          T* pk = packed.data_ptr<T>();
          for (int64_t m = 0; m < M; ++m) {
            std::copy(okg + old_at[m] * d, okg + (old_at[m] + 1) * d, pk + m * d);
            std::copy(cand_p + old_at[m] * H, cand_p + (old_at[m] + 1) * H, rows + m * H);
          }
          at::Tensor row_grads = at::mm(packed, key_weight);  // (M, H)
          grad_key_weight.addmm_(packed.t(), old_rows.narrow(0, 0, M));
          const T* rg = row_grads.data_ptr<T>();
          for (int64_t m = 0; m < M; ++m)
            for (int64_t j = 0; j < H; ++j) gc[old_at[m] * H + j] += rg[m * H + j];
        }
      } else {
        at::Tensor gq_t = g_query[st];
        dh_hat.addmm_(gq_t, query_to_state);
      }
      // the candidates' gradients: the chunk's own slots accumulate, old slots go to the memory's buffer
      for (int64_t r = 0; r < B * C; ++r) {
        const int64_t id = idp[r], b = r / C;
        if (id < 0 || (id < N0 && ogp == nullptr)) continue;
        const T* g = gc + r * H;
        T* dst = id >= N0 ? sgp + (b * Nn + (id - N0)) * H : ogp + b * old_grad->stride(0) + id * old_grad->stride(1);
        for (int64_t j = 0; j < H; ++j) dst[j] += g[j];
      }
      --st;
    }
    {  // the LSTM cell's backward
      const T* ap = acts_p + i * B * G;
      const T* tcp = tcs_p + i * B * H;
      const T* cprev = i > 0 ? cs_p + (i - 1) * B * H : c0_p;
      T* gg = gg_p + i * B * G;
      for (int64_t b = 0; b < B; ++b) {
        const T* a = ap + b * G;
        T* g = gg + b * G;
#pragma omp simd  // the gate rows written here alias none of the rows read
        for (int64_t j = 0; j < H; ++j) {
          const T ig = a[j], fg = a[H + j], cg = a[2 * H + j], og = a[3 * H + j];
          const T tc = tcp[b * H + j];
          const T dh = dhh[b * H + j];
          const T dc = dcp[b * H + j] + dh * og * (T(1) - tc * tc);
          g[j] = dc * cg * ig * (T(1) - ig);
          g[H + j] = dc * cprev[b * H + j] * fg * (T(1) - fg);
          g[2 * H + j] = dc * ig * (T(1) - cg * cg);
          g[3 * H + j] = dh * tc * og * (T(1) - og);
          dcp[b * H + j] = dc * fg;
        }
      }
    }
    if (t % s.k_trunc == 0) {  // the chain was cut before this step
      dh_carry.zero_();
      dc_carry.zero_();
    } else {
      at::mm_out(dh_carry, grad_gates[i], w_hh);
    }
  }
  // weight gradients, batched over the steps
  // [W_ih W_hh]: ([x_t ; h_{t-1}] over all steps)ᵀ × the gates' gradients, (I + H, G), thin factor on the left
  const at::Tensor& xh = saved[XH];
  const int64_t I = xh.size(2) - H;
  at::Tensor flat_grads = grad_gates.view({L * B, G});
  at::Tensor grad_weights_t = at::mm(xh.view({L * B, I + H}).t(), flat_grads);
  at::Tensor grad_w_ih = grad_weights_t.narrow(0, 0, I).t().contiguous();
  at::Tensor grad_w_hh = grad_weights_t.narrow(0, I, H).t().contiguous();
  at::Tensor grad_bias = flat_grads.sum(0);
  at::Tensor grad_x = x_grad ? at::mm(flat_grads, w_ih).view({L, B, I}) : at::Tensor();
  if (S > 0) {
    at::Tensor hh = saved[ATT_H_HAT].view({S * B, H});
    if (s.cosine) {
      grad_query_weight.addmm_(g_query.view({S * B, d}).t(), hh);
    } else {
      // q~ = q W_k, q = h_hat Wq'^T: g_q = g_q~ W_k^T; g_Wq' = g_q^T h_hat; g_W_k += q^T g_q~
      at::Tensor gq = at::mm(g_query.view({S * B, H}), key_weight.t());  // (S B, d)
      grad_query_weight.addmm_(gq.t(), hh);
      grad_key_weight.addmm_(saved[QUERIES].reshape({S * B, d}).t(), g_query.view({S * B, H}));
    }
  }
  if (s.cosine && Nn > 0)  // the chunk's own slots' keys: g_W_k += g_k^T m
    grad_key_weight.addmm_(key_grads.view({B * Nn, d}).t(), new_values.reshape({B * Nn, H}));
  at::Tensor grad_temperature = at::full({}, grad_tau, opts);
  return {grad_x.defined() ? grad_x : at::zeros({0}, opts), dh_carry, dc_carry, grad_w_ih, grad_w_hh, grad_bias,
          grad_query_weight, grad_key_weight, grad_temperature};
}

Spec make_spec(int64_t t0, int64_t k_top, int64_t k_att, int64_t k_trunc, int64_t attend_every, int64_t count,
               bool cosine, bool softmax, bool slot_h_hat, bool to_state, double eps) {
  return Spec{t0, k_top, k_att, k_trunc, attend_every, count, cosine, softmax, slot_h_hat, to_state, eps};
}

std::vector<at::Tensor> forward(at::Tensor x, at::Tensor h0, at::Tensor c0, at::Tensor w_ih, at::Tensor w_hh,
                                at::Tensor bias, at::Tensor query_weight, at::Tensor key_weight, at::Tensor temperature,
                                at::Tensor old_values, std::optional<at::Tensor> old_keys,
                                std::optional<at::Tensor> replay, py::object search_fn, py::object add_fn, int64_t t0,
                                int64_t k_top, int64_t k_att, int64_t k_trunc, int64_t attend_every, int64_t count,
                                bool cosine, bool softmax, bool slot_h_hat, bool to_state, double eps) {
  TORCH_CHECK(x.device().is_cpu(), "the compiled SAB recurrence runs on the CPU only");
  TORCH_CHECK(x.is_contiguous() && h0.is_contiguous() && c0.is_contiguous() && w_ih.is_contiguous() &&
              w_hh.is_contiguous(), "contiguous inputs expected");
  TORCH_CHECK(old_values.size(1) == 0 || old_values.stride(2) == 1, "slot values must be contiguous per slot");
  const Spec s = make_spec(t0, k_top, k_att, k_trunc, attend_every, count, cosine, softmax, slot_h_hat, to_state, eps);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sab_forward", [&] {
    out = forward_impl<scalar_t>(x, h0, c0, w_ih, w_hh, bias, query_weight, key_weight, temperature, old_values,
                                 old_keys, replay, search_fn, add_fn, s);
  });
  return out;
}

std::vector<at::Tensor> backward(at::Tensor grad_features, at::Tensor grad_h, at::Tensor grad_c,
                                 at::Tensor grad_new_values, at::Tensor c0, at::Tensor w_ih, at::Tensor w_hh,
                                 bool x_grad, at::Tensor query_weight, at::Tensor key_weight, at::Tensor temperature,
                                 at::Tensor old_values, std::optional<at::Tensor> old_grad,
                                 std::vector<at::Tensor> saved, int64_t t0, int64_t k_top, int64_t k_att,
                                 int64_t k_trunc, int64_t attend_every, int64_t count, bool cosine, bool softmax,
                                 bool slot_h_hat, bool to_state, double eps) {
  const Spec s = make_spec(t0, k_top, k_att, k_trunc, attend_every, count, cosine, softmax, slot_h_hat, to_state, eps);
  TORCH_CHECK(saved.size() == SAVED_COUNT, "the backward takes the ", int(SAVED_COUNT), " tensors the forward saved");
  for (auto& tensor : saved) tensor = tensor.contiguous();
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(saved[FEATURES].scalar_type(), "sab_backward", [&] {
    out = backward_impl<scalar_t>(grad_features.contiguous(), grad_h.contiguous(), grad_c.contiguous(),
                                  grad_new_values.contiguous(), c0.contiguous(), w_ih, w_hh, x_grad, query_weight,
                                  key_weight, temperature, old_values, saved, old_grad, s);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The SAB recurrence over a chunk of steps, forward and backward (sab_mips/kernel/function.py)";
  m.def("forward", &forward, "the SAB recurrence over a chunk of steps");
  m.def("backward", &backward, "its reverse sweep");
}
