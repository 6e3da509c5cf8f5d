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

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

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
  T sq = 0;
  for (int64_t j = 0; j < n; ++j) sq += v[j] * v[j];
  const T norm = std::sqrt(sq);
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
  T dot = 0;
  for (int64_t j = 0; j < n; ++j) dot += u[j] * g[j];
  for (int64_t j = 0; j < n; ++j) out[j] = (g[j] - u[j] * dot) / norm;
}

int64_t count_steps(int64_t t0, int64_t T, int64_t every, int64_t offset) {
  int64_t n = 0;
  for (int64_t t = t0; t < t0 + T; ++t) n += ((t + offset) % every == 0);
  return n;
}

template <typename T>
const T* slot_row(const at::Tensor& old_values, const at::Tensor& new_values, int64_t b, int64_t id, int64_t N0) {
  if (id < N0) return old_values.data_ptr<T>() + b * old_values.stride(0) + id * old_values.stride(1);
  return new_values.data_ptr<T>() + (b * new_values.size(1) + (id - N0)) * new_values.size(2);
}

template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& input_gates, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& w_hh_t, const at::Tensor& query_weight,
                                     const at::Tensor& key_weight, const at::Tensor& temperature,
                                     const at::Tensor& old_values, const std::optional<at::Tensor>& old_keys,
                                     const std::optional<at::Tensor>& replay, const py::object& search_fn,
                                     const py::object& add_fn, const Spec& s) {
  const int64_t L = input_gates.size(0), B = input_gates.size(1), G = input_gates.size(2), H = G / 4;
  const int64_t d = key_weight.size(0), C = s.count, N0 = old_values.size(1);
  const auto opts = input_gates.options();
  const auto long_opts = opts.dtype(at::kLong);
  const int64_t Nmax = count_steps(s.t0, L, s.k_att, 1), Smax = count_steps(s.t0, L, s.attend_every, 0);

  at::Tensor features = at::empty({L, B, 2 * H}, opts);
  at::Tensor acts = at::empty({L, B, G}, opts);  // gate activations i, f, g, o
  at::Tensor cs = at::empty({L, B, H}, opts);
  at::Tensor new_values = at::empty({B, Nmax, H}, opts);
  at::Tensor new_keys = at::empty({B, d, Nmax}, opts);  // by column, as the exact index stores them
  at::Tensor ids = at::full({Smax, B, C}, -1, long_opts);
  at::Tensor weights = at::zeros({Smax, B, C}, opts);
  at::Tensor active = at::zeros({Smax, B, C}, opts.dtype(at::kByte));
  at::Tensor totals = at::zeros({Smax, B}, opts);
  at::Tensor sources = at::zeros({Smax, B}, long_opts);
  at::Tensor queries = at::empty({Smax, B, d}, opts);  // dot: q; cosine: the unit query before tau
  at::Tensor query_norms = at::empty({Smax, B}, opts);  // cosine: |W_q h_hat|
  at::Tensor folded = at::empty({Smax, B, H}, opts);  // dot: q~ = q W_k
  at::Tensor cand_keys = at::empty({Smax, B, C, s.cosine ? d : 0}, opts);  // cosine: unit keys
  at::Tensor cand_norms = at::empty({Smax, B, C}, opts);
  at::Tensor att_step = at::empty({Smax}, long_opts), write_step = at::empty({Nmax}, long_opts);
  const T tau = s.cosine ? temperature.item<T>() : T(1);
  const bool exact_search = old_keys.has_value() && !replay.has_value();
  double search_seconds = 0;

  at::Tensor h = h0.clone(), c = c0.clone();
  at::Tensor gates = at::empty({B, G}, opts), cand = at::empty({B, C, H}, opts);
  at::Tensor query_t = query_weight.t(), key_t = key_weight.t();
  int64_t n = 0, S = 0;  // slots written, attention steps done
  for (int64_t i = 0; i < L; ++i) {
    const int64_t t = s.t0 + i;
    at::addmm_out(gates, input_gates[i], h, w_hh_t);
    {  // the LSTM cell: gates i, f, g, o (torch's order)
      const T* gp = gates.data_ptr<T>();
      T* ap = acts[i].data_ptr<T>();
      T* cp = c.data_ptr<T>();
      T* hp = h.data_ptr<T>();
      T* cs_p = cs[i].data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) {
        const T* g = gp + b * G;
        T* a = ap + b * G;
        for (int64_t j = 0; j < H; ++j) {
          const T ig = sigmoid(g[j]), fg = sigmoid(g[H + j]), gg = std::tanh(g[2 * H + j]), og = sigmoid(g[3 * H + j]);
          a[j] = ig, a[H + j] = fg, a[2 * H + j] = gg, a[3 * H + j] = og;
          const T cn = fg * cp[b * H + j] + ig * gg;
          cp[b * H + j] = cn;
          cs_p[b * H + j] = cn;
          hp[b * H + j] = og * std::tanh(cn);  // h_hat for now
        }
      }
    }
    at::Tensor h_hat = h.clone();
    T* feat = features[i].data_ptr<T>();
    std::fill(feat, feat + B * 2 * H, T(0));
    const int64_t N = N0 + n;
    if (t % s.attend_every == 0 && N > 0) {
      const int64_t st = S++;
      att_step.data_ptr<int64_t>()[st] = i;
      at::Tensor q;  // the search query (B, d)
      if (s.cosine) {
        at::Tensor u = at::mm(h_hat, query_t);
        T* up = u.data_ptr<T>();
        T* qn = query_norms[st].data_ptr<T>();
        for (int64_t b = 0; b < B; ++b) qn[b] = normalise(up + b * d, d);
        queries[st].copy_(u);
        q = u.mul_(tau);
      } else {
        q = at::mm(h_hat, query_t);
        queries[st].copy_(q);
        folded[st].copy_(at::mm(q, key_weight));
      }
      int64_t* idp = ids[st].data_ptr<int64_t>();
      if (replay.has_value()) {
        ids[st].copy_((*replay)[st]);
      } else if (exact_search) {
        const auto start = std::chrono::steady_clock::now();
        at::Tensor q1 = q.unsqueeze(1);
        std::vector<at::Tensor> parts;
        if (N0 > 0) parts.push_back(at::bmm(q1, old_keys->transpose(1, 2)).squeeze(1));
        if (n > 0) parts.push_back(at::bmm(q1, new_keys.narrow(2, 0, n)).squeeze(1));
        at::Tensor scores = parts.size() == 1 ? parts[0] : at::cat(parts, 1);
        at::Tensor top = std::get<1>(scores.topk(std::min(C, N), 1));
        ids[st].narrow(1, 0, top.size(1)).copy_(top);
        for (int64_t b = 0; b < B; ++b) sort_ids(idp + b * C, C);
        search_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      } else {
        at::Tensor found = search_fn(q).cast<at::Tensor>();
        TORCH_CHECK(found.dim() == 2 && found.size(0) == B && found.size(1) == C,
                    "the index returned ids of shape ", found.sizes(), ", expected (", B, ", ", C, ")");
        ids[st].copy_(found);
      }
      // gather the candidates (B, C, H); padding reads as zeros and takes no part
      T* cp = cand.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < C; ++k) {
          const int64_t id = idp[b * C + k];
          TORCH_CHECK(id < N, "candidate slot ", id, " does not exist (", N, " slots)");
          T* dst = cp + (b * C + k) * H;
          if (id < 0) {
            std::fill(dst, dst + H, T(0));
          } else {
            const T* src = slot_row<T>(old_values, new_values, b, id, N0);
            std::copy(src, src + H, dst);
          }
        }
      at::Tensor scores = at::empty({B, C}, opts);
      T* sp = scores.data_ptr<T>();
      if (s.cosine) {
        at::Tensor keys = at::mm(cand.view({B * C, H}), key_t);  // (B C, d)
        T* kp = keys.data_ptr<T>();
        T* np = cand_norms[st].data_ptr<T>();
        const T* qp = q.data_ptr<T>();
        for (int64_t r = 0; r < B * C; ++r) {
          np[r] = normalise(kp + r * d, d);
          T acc = 0;
          for (int64_t j = 0; j < d; ++j) acc += kp[r * d + j] * qp[(r / C) * d + j];
          sp[r] = acc;
        }
        cand_keys[st].copy_(keys.view({B, C, d}));
      } else {
        const T* fp = folded[st].data_ptr<T>();
        for (int64_t r = 0; r < B * C; ++r) {
          T acc = 0;
          for (int64_t j = 0; j < H; ++j) acc += cp[r * H + j] * fp[(r / C) * H + j];
          sp[r] = acc;
        }
      }
      T* wp = weights[st].data_ptr<T>();
      uint8_t* actp = active[st].data_ptr<uint8_t>();
      T* tp = totals[st].data_ptr<T>();
      int64_t* srcp = sources[st].data_ptr<int64_t>();
      T* hp = h.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) {
        sparsify_row<T>(sp + b * C, idp + b * C, C, s, wp + b * C, actp + b * C, tp + b, srcp + b);
        T* summary = feat + b * 2 * H + H;
        for (int64_t k = 0; k < C; ++k) {
          const T wk = wp[b * C + k];
          if (wk == T(0)) continue;
          const T* m = cp + (b * C + k) * H;
          for (int64_t j = 0; j < H; ++j) summary[j] += wk * m[j];
        }
        if (s.to_state)
          for (int64_t j = 0; j < H; ++j) hp[b * H + j] += summary[j];
      }
    }
    {  // features [h_t ; s_t]
      const T* hp = h.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) std::copy(hp + b * H, hp + (b + 1) * H, feat + b * 2 * H);
    }
    if ((t + 1) % s.k_att == 0) {  // the slot write
      const at::Tensor& value = s.slot_h_hat ? h_hat : h;
      new_values.select(1, n).copy_(value);
      at::Tensor key = at::mm(value, key_t);  // (B, d)
      if (s.cosine) {
        T* kp = key.data_ptr<T>();
        for (int64_t b = 0; b < B; ++b) normalise(kp + b * d, d);
      }
      new_keys.select(2, n).copy_(key);
      write_step.data_ptr<int64_t>()[n] = i;
      ++n;
      if (!add_fn.is_none()) add_fn(key.unsqueeze(1));
    }
  }
  at::Tensor seconds = at::full({}, search_seconds, opts.dtype(at::kDouble));
  return {features, h, c, new_values.narrow(1, 0, n), new_keys.narrow(2, 0, n).transpose(1, 2).contiguous(),
          ids.narrow(0, 0, S), weights.narrow(0, 0, S), seconds,
          // what the backward needs
          acts, cs, active.narrow(0, 0, S), totals.narrow(0, 0, S), sources.narrow(0, 0, S),
          queries.narrow(0, 0, S), query_norms.narrow(0, 0, S), folded.narrow(0, 0, S),
          cand_keys.narrow(0, 0, S), cand_norms.narrow(0, 0, S), att_step.narrow(0, 0, S), write_step.narrow(0, 0, n)};
}

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad_features, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                      const at::Tensor& grad_new_values, const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& w_hh_t, const at::Tensor& query_weight,
                                      const at::Tensor& key_weight, const at::Tensor& temperature,
                                      const at::Tensor& old_values, const at::Tensor& features,
                                      const at::Tensor& new_values, const at::Tensor& ids, const at::Tensor& weights,
                                      const at::Tensor& acts, const at::Tensor& cs, const at::Tensor& active,
                                      const at::Tensor& totals, const at::Tensor& sources, const at::Tensor& queries,
                                      const at::Tensor& query_norms, const at::Tensor& folded,
                                      const at::Tensor& cand_keys, const at::Tensor& cand_norms,
                                      const at::Tensor& att_step, const at::Tensor& write_step,
                                      const std::optional<at::Tensor>& old_grad, const Spec& s) {
  const int64_t L = acts.size(0), B = acts.size(1), G = acts.size(2), H = G / 4;
  const int64_t d = key_weight.size(0), C = s.count, N0 = old_values.size(1);
  const int64_t S = ids.size(0), Nn = new_values.size(1);
  const auto opts = acts.options();
  const T tau = s.cosine ? temperature.item<T>() : T(1);
  const T eps = T(s.eps);

  at::Tensor grad_gates = at::empty({L, B, G}, opts);
  at::Tensor dh_carry = grad_h.clone(), dc_carry = grad_c.clone();
  at::Tensor slot_grads = grad_new_values.clone();  // (B, Nn, H): gradients of the chunk's own slots
  at::Tensor grad_query_weight = at::zeros_like(query_weight), grad_key_weight = at::zeros_like(key_weight);
  T grad_tau = 0;
  at::Tensor g_query = at::zeros({S, B, s.cosine ? d : H}, opts);  // dot: g of q~; cosine: g of W_q h_hat
  at::Tensor dh_hat = at::empty({B, H}, opts), ds = at::empty({B, H}, opts);
  at::Tensor g_cand = at::empty({B, C, H}, opts), g_keys = at::empty({B * C, s.cosine ? d : 0}, opts);
  at::Tensor cand = at::empty({B, C, H}, opts);
  at::Tensor query_to_state;  // dot: W_k^T W_q' (H, H), the map from the gradient of q~ to that of h_hat
  if (!s.cosine) query_to_state = at::mm(key_weight.t(), query_weight);  // (H, H): q~ = h_hat Wq'^T W_k
  const int64_t* idp_all = ids.data_ptr<int64_t>();
  const int64_t* asp = att_step.data_ptr<int64_t>();
  const int64_t* wsp = write_step.data_ptr<int64_t>();
  std::vector<T> g_w(C), g_a(C), tmp(std::max(d, H)), g_unit(d);
  int64_t st = S - 1, w = Nn - 1;
  for (int64_t i = L - 1; i >= 0; --i) {
    const int64_t t = s.t0 + i;
    const T* gf = grad_features[i].data_ptr<T>();
    T* dhp = dh_carry.data_ptr<T>();
    T* dhh = dh_hat.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) dhp[b * H + j] += gf[b * 2 * H + j];  // dL/dh_t
    std::fill(dhh, dhh + B * H, T(0));
    if (w >= 0 && wsp[w] == i) {  // the slot written at this step takes what its readers deposited
      const T* sg = slot_grads.data_ptr<T>();
      T* target = s.slot_h_hat ? dhh : dhp;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < H; ++j) target[b * H + j] += sg[(b * Nn + w) * H + j];
      --w;
    }
    for (int64_t j = 0; j < B * H; ++j) dhh[j] += dhp[j];  // h = h_hat (+ s)
    if (st >= 0 && asp[st] == i) {
      // the attention step's backward (sab_mips/ops/sparse_attention.py, attend_backward)
      T* dsp = ds.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < H; ++j) dsp[b * H + j] = gf[b * 2 * H + H + j] + (s.to_state ? dhp[b * H + j] : T(0));
      const int64_t* idp = idp_all + st * B * C;
      T* cp = cand.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < C; ++k) {
          const int64_t id = idp[b * C + k];
          T* dst = cp + (b * C + k) * H;
          if (id < 0) {
            std::fill(dst, dst + H, T(0));
          } else {
            const T* src = slot_row<T>(old_values, new_values, b, id, N0);
            std::copy(src, src + H, dst);
          }
        }
      const T* wp = weights[st].data_ptr<T>();
      const uint8_t* actp = active[st].data_ptr<uint8_t>();
      const T* tp = totals[st].data_ptr<T>();
      const int64_t* srcp = sources[st].data_ptr<int64_t>();
      T* gc = g_cand.data_ptr<T>();
      T* gq = g_query[st].data_ptr<T>();
      const T* qp = queries[st].data_ptr<T>();
      const T* fp = folded[st].data_ptr<T>();
      const T* kp = s.cosine ? cand_keys[st].data_ptr<T>() : nullptr;
      const T* knp = cand_norms[st].data_ptr<T>();
      T* gk = s.cosine ? g_keys.data_ptr<T>() : nullptr;
      for (int64_t b = 0; b < B; ++b) {
        const T* gsum = dsp + b * H;
        T mean = 0;
        for (int64_t k = 0; k < C; ++k) {
          const T* m = cp + (b * C + k) * H;
          T acc = 0;
          for (int64_t j = 0; j < H; ++j) acc += m[j] * gsum[j];
          g_w[k] = acc;
          mean += acc * wp[b * C + k];
        }
        for (int64_t k = 0; k < C; ++k) {
          const T centred = g_w[k] - mean;
          if (s.softmax) {
            g_a[k] = wp[b * C + k] * centred;
          } else {
            g_a[k] = actp[b * C + k] ? centred / (tp[b] + eps) : T(0);
          }
        }
        if (!s.softmax) {
          T sum = 0;
          for (int64_t k = 0; k < C; ++k) sum += g_a[k];
          g_a[srcp[b]] -= sum;  // delta is the (K+1)-th score
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
          for (int64_t j = 0; j < d; ++j) gqb[j] = 0;
          for (int64_t k = 0; k < C; ++k) {
            const T* uk = kp + (b * C + k) * d;
            for (int64_t j = 0; j < d; ++j) {
              gqb[j] += g_a[k] * uk[j];
              g_unit[j] = g_a[k] * tau * qp[b * d + j];
            }
            unit_backward<T>(g_unit.data(), uk, knp[b * C + k], d, gk + (b * C + k) * d);
          }
          // q = tau u^ (u^ = the unit query): g_tau += g_q . u^; g_u^ = tau g_q; then through the norm
          T dot = 0;
          for (int64_t j = 0; j < d; ++j) dot += gqb[j] * qp[b * d + j];
          grad_tau += dot;
          for (int64_t j = 0; j < d; ++j) tmp[j] = tau * gqb[j];
          unit_backward<T>(tmp.data(), qp + b * d, query_norms[st].data_ptr<T>()[b], d, gqb);
        } else {
          // scores a_k = q~ . m_k: g_m_k += g_a q~; g_q~ = sum g_a m_k
          T* gqb = gq + b * H;
          for (int64_t j = 0; j < H; ++j) gqb[j] = 0;
          for (int64_t k = 0; k < C; ++k) {
            const T* m = cp + (b * C + k) * H;
            T* g = gc + (b * C + k) * H;
            for (int64_t j = 0; j < H; ++j) {
              g[j] += g_a[k] * fp[b * H + j];
              gqb[j] += g_a[k] * m[j];
            }
          }
        }
      }
      if (s.cosine) {
        // keys k = W_k m: g_m += g_k W_k; g_W_k += g_k^T m
        g_cand.view({B * C, H}).addmm_(g_keys, key_weight);
        grad_key_weight.addmm_(g_keys.t(), cand.view({B * C, H}));
        dh_hat.addmm_(g_query[st], query_weight);  // u = h_hat W_q^T
      } else {
        dh_hat.addmm_(g_query[st], query_to_state);
      }
      // the candidates' gradients: the chunk's own slots accumulate, old slots go out
      T* sgp = slot_grads.data_ptr<T>();
      T* ogp = old_grad.has_value() ? old_grad->data_ptr<T>() : nullptr;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < C; ++k) {
          const int64_t id = idp[b * C + k];
          if (id < 0 || (id < N0 && ogp == nullptr)) continue;
          const T* g = gc + (b * C + k) * H;
          T* dst = id >= N0 ? sgp + (b * Nn + (id - N0)) * H : ogp + b * old_grad->stride(0) + id * old_grad->stride(1);
          for (int64_t j = 0; j < H; ++j) dst[j] += g[j];
        }
      --st;
    }
    {  // the LSTM cell's backward
      const T* ap = acts[i].data_ptr<T>();
      const T* cp = cs[i].data_ptr<T>();
      const T* cprev = i > 0 ? cs[i - 1].data_ptr<T>() : c0.data_ptr<T>();
      T* dcp = dc_carry.data_ptr<T>();
      T* gg = grad_gates[i].data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) {
        const T* a = ap + b * G;
        T* g = gg + b * G;
        for (int64_t j = 0; j < H; ++j) {
          const T ig = a[j], fg = a[H + j], cg = a[2 * H + j], og = a[3 * H + j];
          const T tc = std::tanh(cp[b * H + j]);
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
      at::mm_out(dh_carry, grad_gates[i], w_hh_t.t());
    }
  }
  // weight gradients, batched over the steps
  at::Tensor h_prev = at::cat({h0.unsqueeze(0), features.narrow(0, 0, L - 1).narrow(2, 0, H)}, 0);  // (T, B, H)
  at::Tensor grad_w_hh_t = at::mm(h_prev.reshape({L * B, H}).t(), grad_gates.view({L * B, G}));
  if (S > 0) {
    // h_hat of each attention step, from the saved gates: o * tanh(c)
    at::Tensor steps = att_step;
    at::Tensor att_h_hat = acts.index_select(0, steps).narrow(2, 3 * H, H) * cs.index_select(0, steps).tanh();
    at::Tensor hh = att_h_hat.reshape({S * B, H});
    if (s.cosine) {
      grad_query_weight.addmm_(g_query.view({S * B, d}).t(), hh);
    } else {
      // q~ = q W_k, q = h_hat Wq'^T: g_q = g_q~ W_k^T; g_Wq' = g_q^T h_hat; g_W_k += q^T g_q~
      at::Tensor gq = at::mm(g_query.view({S * B, H}), key_weight.t());  // (S B, d)
      grad_query_weight.addmm_(gq.t(), hh);
      grad_key_weight.addmm_(queries.reshape({S * B, d}).t(), g_query.view({S * B, H}));
    }
  }
  at::Tensor grad_temperature = at::full({}, grad_tau, opts);
  return {grad_gates, dh_carry, dc_carry, grad_w_hh_t, grad_query_weight, grad_key_weight, grad_temperature};
}

Spec make_spec(int64_t t0, int64_t k_top, int64_t k_att, int64_t k_trunc, int64_t attend_every, int64_t count,
               bool cosine, bool softmax, bool slot_h_hat, bool to_state, double eps) {
  return Spec{t0, k_top, k_att, k_trunc, attend_every, count, cosine, softmax, slot_h_hat, to_state, eps};
}

std::vector<at::Tensor> forward(at::Tensor input_gates, at::Tensor h0, at::Tensor c0, at::Tensor w_hh_t,
                                at::Tensor query_weight, at::Tensor key_weight, at::Tensor temperature,
                                at::Tensor old_values, std::optional<at::Tensor> old_keys,
                                std::optional<at::Tensor> replay, py::object search_fn, py::object add_fn, int64_t t0,
                                int64_t k_top, int64_t k_att, int64_t k_trunc, int64_t attend_every, int64_t count,
                                bool cosine, bool softmax, bool slot_h_hat, bool to_state, double eps) {
  TORCH_CHECK(input_gates.device().is_cpu(), "the compiled SAB recurrence runs on the CPU only");
  TORCH_CHECK(input_gates.is_contiguous() && h0.is_contiguous() && c0.is_contiguous(), "contiguous inputs expected");
  TORCH_CHECK(old_values.stride(2) == 1, "slot values must be contiguous per slot");
  const Spec s = make_spec(t0, k_top, k_att, k_trunc, attend_every, count, cosine, softmax, slot_h_hat, to_state, eps);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(input_gates.scalar_type(), "sab_forward", [&] {
    out = forward_impl<scalar_t>(input_gates, h0, c0, w_hh_t, query_weight, key_weight, temperature, old_values,
                                 old_keys, replay, search_fn, add_fn, s);
  });
  return out;
}

std::vector<at::Tensor> backward(at::Tensor grad_features, at::Tensor grad_h, at::Tensor grad_c,
                                 at::Tensor grad_new_values, at::Tensor h0, at::Tensor c0, at::Tensor w_hh_t,
                                 at::Tensor query_weight, at::Tensor key_weight, at::Tensor temperature,
                                 at::Tensor old_values, std::optional<at::Tensor> old_grad,
                                 std::vector<at::Tensor> saved, int64_t t0, int64_t k_top,
                                 int64_t k_att, int64_t k_trunc, int64_t attend_every, int64_t count, bool cosine,
                                 bool softmax, bool slot_h_hat, bool to_state, double eps) {
  const Spec s = make_spec(t0, k_top, k_att, k_trunc, attend_every, count, cosine, softmax, slot_h_hat, to_state, eps);
  TORCH_CHECK(saved.size() == 16, "the backward takes the 16 tensors the forward saved");
  std::vector<at::Tensor> out;
  at::Tensor gf = grad_features.contiguous();
  AT_DISPATCH_FLOATING_TYPES(saved[0].scalar_type(), "sab_backward", [&] {
    out = backward_impl<scalar_t>(gf, grad_h.contiguous(), grad_c.contiguous(), grad_new_values.contiguous(), h0, c0,
                                  w_hh_t, query_weight, key_weight, temperature, old_values, saved[0], saved[1],
                                  saved[2], saved[3], saved[4], saved[5], saved[6], saved[7], saved[8], saved[9],
                                  saved[10], saved[11], saved[12], saved[13], saved[14], saved[15], old_grad, s);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The SAB recurrence over a chunk of steps, forward and backward (sab_mips/kernel/compiled.py)";
  m.def("forward", &forward, "the SAB recurrence over a chunk of steps");
  m.def("backward", &backward, "its reverse sweep");
}
