// The q8_0 matmul kernels, written once and compiled once per instruction set by
// engine/kernels.cpp, which includes this file several times with these macros defined (the
// file undefines them at its end, ready for the next instantiation):
//   DUET_Q8_NS         the namespace of this instantiation (avx2, avx_vnni, avx512_vnni)
//   DUET_Q8_TARGET     the function attribute naming its instruction set
//   DUET_Q8_DPBUSD     (acc, u, s): acc + per int32 lane the sum of 4 products u8 x s8
//   DUET_Q8_TILE_ROWS   rows per many-token tile of the file layout
//   DUET_Q8_TILE_TOKENS tokens per pass over a packed group (engine/q8_pack.hpp)
//   DUET_Q8_ZMM        1 where 512-bit registers are there (AVX512-VNNI): packed groups go in
//                      pairs through packed_pair; 0 elsewhere
//   DUET_Q8_UNSIGNED_X 1 where DPBUSD is one exact instruction (VNNI): the many-token tiles then
//                      feed x + 128 as the unsigned operand and start each (row, block) from
//                      -128 * sum(w) (once per row block, shared by all tokens) instead of
//                      moving signs per (row, token); 0 for maddubs, whose int16 pairs would
//                      saturate on x + 128
// A function's target attribute covers the intrinsics it may use, so the same template cannot
// serve two instruction sets; the include keeps one copy of the logic instead of three.
//
// Every path computes the same int32 lanes: lane l of a block's dot product is
// sum_{k=4l}^{4l+3} w_k * x_k, exact: as |w_k| * sign(x_k, w_k) (no saturation in maddubs+madd
// or dpbusd), or as (x_k + 128) * w_k - 128 * w_k (dpbusd only). The float steps after it are
// identical too, so all instantiations (and the one-token and many-token paths of each) give
// bit-identical results; tests/engine/kernels_test.cpp checks this with ==.

namespace DUET_Q8_NS {

/// Exact integer dot product of 32 q8_0 weights with 32 quantized activations, as 8 int32
/// partial sums. |w| is the unsigned operand (so w = -128 stays exact as 128) and x takes
/// w's sign.
DUET_Q8_TARGET inline __m256i dot_q8_32(const std::int8_t* w, const std::int8_t* x) {
  const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return DUET_Q8_DPBUSD(_mm256_setzero_si256(), _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
}

/// One token against R q8_0 rows: per 32-value block an exact integer dot, scaled by
/// d_w * d_x into one 8-lane accumulator per row. Each (row, token) result depends on that row
/// and token only, so the single-token and multi-token paths give bit-identical results.
template <int R>
DUET_Q8_TARGET void gemv_q8_0(const tensor_view& w, std::int64_t r0, const q8_activation_block* xq,
                              float* y) {
  const std::int64_t blocks = w.cols / 32;
  const q8_0_block* rows[R];
  DUET_UNROLL
  for (int i = 0; i < R; ++i) rows[i] = reinterpret_cast<const q8_0_block*>(w.row(r0 + i));
  __m256 acc[R];
  DUET_UNROLL
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_ps();
  for (std::int64_t b = 0; b < blocks; ++b) {
    const float dx = xq[b].d;
    DUET_UNROLL
    for (int i = 0; i < R; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(rows[i] + b) + prefetch_bytes, _MM_HINT_T0);
      const __m256 scale = _mm256_set1_ps(_cvtsh_ss(rows[i][b].d) * dx);
      acc[i] =
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q8_32(rows[i][b].qs, xq[b].qs)), scale, acc[i]);
    }
  }
  DUET_UNROLL
  for (int i = 0; i < R; ++i) y[r0 + i] = hsum(acc[i]);
}

/// R q8_0 rows x NT tokens (prefill, batched decode): each weight block is loaded (and its
/// per-row part of the dot product prepared) once for NT tokens, each activation block once for
/// R rows; the scale d_w * d_x is one vector multiply per (row, token). Per (row, token) the
/// int32 lanes and the float operations and their order are exactly gemv_q8_0's, so the result
/// is bit-identical to multiplying that token alone.
/// With `prefetch_next`, the next R rows are prefetched alongside (the first tile over a row
/// group streams it from memory; the next group then comes from cache).
template <int R, int NT>
DUET_Q8_TARGET void tile_q8_0(const tensor_view& w, std::int64_t r0, const q8_activation_block* xq,
                              std::int64_t blocks, int t0, float* y, std::int64_t y_stride,
                              bool prefetch_next = false) {
  const q8_0_block* rows[R];
  DUET_UNROLL
  for (int i = 0; i < R; ++i) rows[i] = reinterpret_cast<const q8_0_block*>(w.row(r0 + i));
  const std::int64_t row_bytes = blocks * std::int64_t(sizeof(q8_0_block));
  prefetch_next = prefetch_next && r0 + 2 * R <= w.rows;
  __m256 acc[R][NT];
  DUET_UNROLL
  for (int i = 0; i < R; ++i) DUET_UNROLL
  for (int j = 0; j < NT; ++j) acc[i][j] = _mm256_setzero_ps();
#if DUET_Q8_UNSIGNED_X
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80)); // +128 as u8; -128 as s8
#endif
  for (std::int64_t b = 0; b < blocks; ++b) {
    __m256i wv[R], start[R];
    __m256 dw[R];
    DUET_UNROLL
    for (int i = 0; i < R; ++i) {
      if (prefetch_next && b % 2 == 0) // 2 blocks = 68 bytes, about a line
        _mm_prefetch(reinterpret_cast<const char*>(rows[i] + b) + R * row_bytes, _MM_HINT_T0);
      wv[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i][b].qs));
#if DUET_Q8_UNSIGNED_X
      // -128 * sum of each lane's 4 weights: (x + 128) . w starting here is exactly x . w.
      start[i] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                  DUET_Q8_DPBUSD(_mm256_setzero_si256(), bias, wv[i]));
#else
      start[i] = _mm256_sign_epi8(wv[i], wv[i]); // |w|, the unsigned operand
#endif
      dw[i] = _mm256_set1_ps(_cvtsh_ss(rows[i][b].d));
    }
    DUET_UNROLL
    for (int j = 0; j < NT; ++j) {
      const q8_activation_block& xb = xq[(t0 + j) * blocks + b];
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qs));
      const __m256 dx = _mm256_set1_ps(xb.d);
#if DUET_Q8_UNSIGNED_X
      const __m256i xu = _mm256_xor_si256(xv, bias); // x + 128, as u8
#endif
      DUET_UNROLL
      for (int i = 0; i < R; ++i) {
#if DUET_Q8_UNSIGNED_X
        const __m256i isum = DUET_Q8_DPBUSD(start[i], xu, wv[i]);
#else
        const __m256i isum =
            DUET_Q8_DPBUSD(_mm256_setzero_si256(), start[i], _mm256_sign_epi8(xv, wv[i]));
#endif
        acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw[i], dx), acc[i][j]);
      }
    }
  }
  DUET_UNROLL
  for (int i = 0; i < R; ++i) DUET_UNROLL
  for (int j = 0; j < NT; ++j) y[(t0 + j) * y_stride + r0 + i] = hsum(acc[i][j]);
}

/// Software pipelining of the weights when the tokens take several passes over each pair of
/// packed groups (both at once in 512-bit registers; in 256-bit ones the first group's passes,
/// and the second group finds the pair in cache): every pass also prefetches its share of the
/// next pair into L2, `lines` cache lines per block, so the next unit's first pass
/// finds its weights in cache instead of waiting on memory while only a few KiB ahead are in
/// flight. With one pass (single-token decode) there is nothing to overlap: that pass streams,
/// prefetching within the unit (the `prefetch` flag of the kernels). Measured (a scratch program
/// timing a decode step's matmuls of a stories110M q8_0 model, 32 tokens, 1 thread, the Xeon VM
/// of 2026-11-29, old and new alternated 3 times): 23.8-24.3 -> 20.8-21.1 ms (288-295 -> 332-336
/// GOP/s); duet bench engine, 32-sequence decode 660-669 -> 679-715 tok/s.
/// The 256-bit kernels (packed_group) take the same plan; only the 512-bit one was measured
/// (this VM runs it), the bit-identity tests cover both.
struct pass_prefetch {
  const char* next = nullptr;   ///< the next unit's first byte; null: no next unit, or one pass
  std::int64_t last_share = 0;  ///< line where the last pass's share starts (it ends the unit)
  std::int64_t share_lines = 0; ///< lines per pass: `lines` per block
  int lines = 0;

  DUET_Q8_TARGET pass_prefetch(const std::uint8_t* next_unit, std::int64_t unit_bytes,
                               std::int64_t blocks, int passes) {
    if (next_unit == nullptr || passes < 2) return;
    next = reinterpret_cast<const char*>(next_unit);
    const std::int64_t unit_lines = (unit_bytes + 63) / 64;
    lines = static_cast<int>((unit_lines + passes * blocks - 1) / (passes * blocks));
    share_lines = lines * blocks;
    // A unit is a pair, 8.5 lines per block, so one share never outgrows it.
    last_share = unit_lines - share_lines;
  }
  /// The first line of pass `pass`'s share.
  DUET_Q8_TARGET const char* share(int pass) const {
    return lines == 0 ? nullptr : next + 64 * std::min(pass * share_lines, last_share);
  }
  /// Issued once per block b of a pass, beside the kernel's loads.
  DUET_Q8_TARGET void at_block(const char* share, std::int64_t b) const {
    for (int l = 0; l < lines; ++l) _mm_prefetch(share + 64 * (b * lines + l), _MM_HINT_T1);
  }
};

/// Packed q8_0 (engine/q8_pack.hpp): the 8 rows of one group against NT tokens t0 .. t0+NT-1,
/// out[j] = the 8 rows' results for token t0 + j. Per (row, block, token) the exact integer dot
/// product isum, then acc = fma(float(isum), d_w * d_x, acc) in block order: the same
/// operations whatever NT is and on every instruction set, so a token's results do not depend
/// on the tokens multiplied with it. With VNNI, one vpdpbusd per 4 values of 8 rows: the packed
/// weights (w + 128) are the unsigned operand, 4 broadcast activation bytes the signed one, and
/// xbias = -128 * sum(x) of the block takes the 128 off once per (block, token). Without, |w|
/// and w's sign moved onto x keep maddubs exact.
/// `prefetch`: prefetch the records ahead (the first pass over a group streams it from memory).
template <int NT>
DUET_Q8_TARGET void packed_group(const std::uint8_t* pair, int half, std::int64_t blocks,
                                 const q8_activation_block* xq, const std::int32_t* xbias, int t0,
                                 __m256* out, bool prefetch, const pass_prefetch& plan,
                                 const char* share) {
  (void)xbias;
  __m256 acc[NT];
  DUET_UNROLL
  for (int j = 0; j < NT; ++j) acc[j] = _mm256_setzero_ps();
#if !DUET_Q8_UNSIGNED_X
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi16(1);
#endif
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::uint8_t* rec = pair + b * static_cast<std::int64_t>(q8_pack_pair_bytes);
    if (prefetch) {
      DUET_UNROLL
      for (int l = 0; l < 9; ++l) // the whole 8.5-line record: the pair's other group reads it next
        _mm_prefetch(reinterpret_cast<const char*>(rec) + prefetch_bytes + 64 * l, _MM_HINT_T0);
    }
    plan.at_block(share, b);
    __m256i wv[8];
    DUET_UNROLL
    for (int k = 0; k < 8; ++k)
      wv[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32 + 64 * k + 32 * half));
    const __m256 dw =
        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 16 * half)));
    DUET_UNROLL
    for (int j = 0; j < NT; ++j) {
      const q8_activation_block& xb = xq[(t0 + j) * blocks + b];
      __m256i s[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
      DUET_UNROLL
      for (int k = 0; k < 8; ++k) {
        std::int32_t x4;
        std::memcpy(&x4, xb.qs + 4 * k, 4);
        const __m256i xv = _mm256_set1_epi32(x4);
#if DUET_Q8_UNSIGNED_X
        s[k % 2] = DUET_Q8_DPBUSD(s[k % 2], wv[k], xv);
#else
        const __m256i ws = _mm256_xor_si256(wv[k], flip); // w, signed
        s[k % 2] = _mm256_add_epi32(
            s[k % 2],
            _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(ws, ws), _mm256_sign_epi8(xv, ws)), ones));
#endif
      }
      __m256i isum = _mm256_add_epi32(s[0], s[1]);
#if DUET_Q8_UNSIGNED_X
      isum = _mm256_add_epi32(isum, _mm256_set1_epi32(xbias[(t0 + j) * blocks + b]));
#endif
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_set1_ps(xb.d)),
                               acc[j]);
    }
  }
  DUET_UNROLL
  for (int j = 0; j < NT; ++j) out[j] = acc[j];
}

#if DUET_Q8_ZMM
/// packed_group for two consecutive groups at once in 512-bit registers: lanes 0-7 are group
/// g0's rows, 8-15 group g1's. Per (row, block, token) the same integer dot product and the same
/// float steps in the same order as packed_group, so the results are the same bits; per
/// multiply-add half the instructions (the broadcasts, the bias, the scaling are shared by 16
/// rows). Tried and dropped: four groups (32 rows) per broadcast, prefill and 32-sequence decode
/// measured the same. The masked intrinsics with an explicit source (mask all ones) stand in for
/// the plain ones, whose _mm512_undefined_* source g++ 12 warns about (-Wmaybe-uninitialized, GCC
/// bug 105593). The int8 peak, measured by duet bench engine on this VM's EPYC with 1 thread:
/// 848-866 GOP/s in 512-bit registers, 420-430 in 256-bit ones.
template <int NT>
DUET_Q8_TARGET void packed_pair(const std::uint8_t* pair, std::int64_t blocks,
                                const q8_activation_block* xq, const std::int32_t* xbias, int t0,
                                __m512* out, bool prefetch, const pass_prefetch& plan,
                                const char* share) {
  __m512 acc[NT];
  DUET_UNROLL
  for (int j = 0; j < NT; ++j) acc[j] = _mm512_setzero_ps();
  // Blocks two at a time: one int32 chain per (block, token), the two blocks' chains
  // interleaved (2 x NT independent chains of 8 vpdpbusd, no add to join two halves), then the
  // float steps of block b and of block b + 1, in that order: the same bits as one block at a
  // time (the loop below, which takes an odd last block). Each weight register is loaded where
  // it is used (two live at a time, not 16). Measured (scratch programs, stories110M q8_0, 1
  // thread, the Xeon VM of 2026-11-29, alternated 3 times): one hot matrix, 32 tokens, w1
  // 387-409 -> 434-435 GOP/s, 64 tokens, w2 390-395 -> 435-439; a 512-token prefill 1263-1313
  // -> 1302-1368 tok/s; 16 steps of 32 sequences 838-880 -> 845-903 tok/s.
  std::int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    const std::uint8_t* rec = pair + b * static_cast<std::int64_t>(q8_pack_pair_bytes);
    const std::uint8_t* rec1 = rec + q8_pack_pair_bytes;
    if (prefetch) {
      DUET_UNROLL
      for (int l = 0; l < 17; ++l) // two records, 17 lines
        _mm_prefetch(reinterpret_cast<const char*>(rec) + 2 * prefetch_bytes + 64 * l, _MM_HINT_T0);
    }
    plan.at_block(share, b);
    plan.at_block(share, b + 1);
    __m512i sa[NT], sb[NT]; // block b's and block b + 1's sums, from their xbias
    DUET_UNROLL
    for (int j = 0; j < NT; ++j) {
      sa[j] = _mm512_set1_epi32(xbias[(t0 + j) * blocks + b]);
      sb[j] = _mm512_set1_epi32(xbias[(t0 + j) * blocks + b + 1]);
    }
    DUET_UNROLL
    for (int k = 0; k < 8; ++k) {
      const __m512i w0 = _mm512_loadu_si512(rec + 32 + 64 * k);
      const __m512i w1 = _mm512_loadu_si512(rec1 + 32 + 64 * k);
      DUET_UNROLL
      for (int j = 0; j < NT; ++j) {
        std::int32_t x0, x1;
        std::memcpy(&x0, xq[(t0 + j) * blocks + b].qs + 4 * k, 4);
        std::memcpy(&x1, xq[(t0 + j) * blocks + b + 1].qs + 4 * k, 4);
        sa[j] = _mm512_dpbusd_epi32(sa[j], w0, _mm512_set1_epi32(x0));
        sb[j] = _mm512_dpbusd_epi32(sb[j], w1, _mm512_set1_epi32(x1));
      }
    }
    const __m512 dw0 = _mm512_mask_cvtph_ps(
        _mm512_setzero_ps(), 0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec)));
    const __m512 dw1 = _mm512_mask_cvtph_ps(
        _mm512_setzero_ps(), 0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec1)));
    DUET_UNROLL
    for (int j = 0; j < NT; ++j) {
      acc[j] =
          _mm512_fmadd_ps(_mm512_mask_cvtepi32_ps(_mm512_setzero_ps(), 0xffff, sa[j]),
                          _mm512_mul_ps(dw0, _mm512_set1_ps(xq[(t0 + j) * blocks + b].d)), acc[j]);
      acc[j] = _mm512_fmadd_ps(_mm512_mask_cvtepi32_ps(_mm512_setzero_ps(), 0xffff, sb[j]),
                               _mm512_mul_ps(dw1, _mm512_set1_ps(xq[(t0 + j) * blocks + b + 1].d)),
                               acc[j]);
    }
  }
  for (; b < blocks; ++b) {
    const std::uint8_t* rec = pair + b * static_cast<std::int64_t>(q8_pack_pair_bytes);
    if (prefetch) {
      DUET_UNROLL
      for (int l = 0; l < 9; ++l) // a record is 8.5 lines; one stream for two groups' bytes
        _mm_prefetch(reinterpret_cast<const char*>(rec) + 2 * prefetch_bytes + 64 * l, _MM_HINT_T0);
    }
    plan.at_block(share, b);
    // 16 rows x 4 values and the 16 rows' scales, one load each (engine/q8_pack.hpp). Before,
    // with each group's 8 rows in records of their own, two 256-bit loads and an insert per
    // register: measured (a scratch program timing a decode step's matmuls of a stories110M
    // q8_0 model, 32 tokens, 1 thread, the Xeon VM of 2026-11-29), a whole-register load in
    // place of each (wrong values, the same work otherwise) 368 -> 391 GOP/s with the matrix
    // hot, 20.5 -> 19.2 ms for the step's matmuls; the pairs layout then 368 -> 388 GOP/s.
    __m512i wv[8];
    DUET_UNROLL
    for (int k = 0; k < 8; ++k) wv[k] = _mm512_loadu_si512(rec + 32 + 64 * k);
    const __m512 dw = _mm512_mask_cvtph_ps(
        _mm512_setzero_ps(), 0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec)));
    // An odd last block: two int32 chains per token (the even and the odd steps of 4 values),
    // the tokens innermost: 2 x NT independent vpdpbusd per two steps, in that order in the code
    // (the even chain starts from xbias), then one add. Integer sums are exact, so the order
    // changes no bit. History, measured with a scratch program timing kernels::matmul on a
    // stories110M q8_0 layer with the matrix hot, the Xeon VM of 2026-11-29, 1 thread, alternated 3
    // times: two chains per token, token after token, then an add and a subtract of the bias,
    // 342-357 GOP/s (128 tokens); one chain per token from xbias, tokens innermost, 393-406; a
    // single chain in the old order 312 (the chains' latency showed); loading each wv[k] only where
    // it is used 260-373 (one block at a time; in the two-block loop above it is what fits the
    // registers, and that loop measured faster). Eighth session (w1, 32 tokens, pairs of groups in
    // one record): one chain per token 385-387, two 403-405 (a step's matmuls 20.4 -> 20.0 ms):
    // with 8 chains of 8 dependent vpdpbusd per block, their latency still showed (16 chains reach
    // the peak in bench/compute_baseline.cpp).
    __m512i isum[NT], odd[NT];
    DUET_UNROLL
    for (int j = 0; j < NT; ++j) {
      isum[j] = _mm512_set1_epi32(xbias[(t0 + j) * blocks + b]);
      odd[j] = _mm512_setzero_si512();
    }
    DUET_UNROLL
    for (int k = 0; k < 8; k += 2) {
      DUET_UNROLL
      for (int j = 0; j < NT; ++j) {
        // Each 4 bytes on their own: one 8-byte copy made g++ 12 split them in integer
        // registers and broadcast from there (261 GOP/s instead of 404, same program).
        std::int32_t even4, odd4;
        std::memcpy(&even4, xq[(t0 + j) * blocks + b].qs + 4 * k, 4);
        std::memcpy(&odd4, xq[(t0 + j) * blocks + b].qs + 4 * k + 4, 4);
        isum[j] = _mm512_dpbusd_epi32(isum[j], wv[k], _mm512_set1_epi32(even4));
        odd[j] = _mm512_dpbusd_epi32(odd[j], wv[k + 1], _mm512_set1_epi32(odd4));
      }
    }
    DUET_UNROLL
    for (int j = 0; j < NT; ++j) isum[j] = _mm512_add_epi32(isum[j], odd[j]);
    DUET_UNROLL
    for (int j = 0; j < NT; ++j)
      acc[j] =
          _mm512_fmadd_ps(_mm512_mask_cvtepi32_ps(_mm512_setzero_ps(), 0xffff, isum[j]),
                          _mm512_mul_ps(dw, _mm512_set1_ps(xq[(t0 + j) * blocks + b].d)), acc[j]);
  }
  DUET_UNROLL
  for (int j = 0; j < NT; ++j) out[j] = acc[j];
}
#endif

/// The packed groups that hold rows of [row_begin, row_end), against all n tokens; returns the
/// first row they do not cover (the rows past the last full group keep the file layout). With
/// 512-bit registers, pairs of groups together (packed_pair) and a group alone at either end of
/// the range; otherwise group by group (packed_group), the two groups of a pair one after the
/// other, the second reading the pair's records from cache.
DUET_Q8_TARGET std::int64_t matmul_packed(const tensor_view& w, const q8_activation_block* xq,
                                          const std::int32_t* xbias, int n, float* y,
                                          std::int64_t y_stride, std::int64_t row_begin,
                                          std::int64_t row_end) {
  const std::int64_t blocks = w.cols / 32, groups = w.rows / q8_pack_rows;
  const std::int64_t g_end = std::min(groups, (row_end + q8_pack_rows - 1) / q8_pack_rows);
  const std::int64_t pair_bytes = blocks * static_cast<std::int64_t>(q8_pack_pair_bytes);
  auto pair_at = [&](std::int64_t p) { return w.q8_packed + p * pair_bytes; };
  // Group g's results for token t into y. A chunk boundary inside a group: the whole group is
  // computed (each row's result is its own) and only the rows of the range are stored.
  auto store = [&](std::int64_t g, int t, __m256 v) DUET_Q8_TARGET {
    const std::int64_t r0 = g * q8_pack_rows, lo = std::max(r0, row_begin),
                       hi = std::min(r0 + q8_pack_rows, row_end);
    float* yt = y + t * y_stride;
    if (lo == r0 && hi == r0 + q8_pack_rows) return _mm256_storeu_ps(yt + r0, v);
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    for (std::int64_t r = lo; r < hi; ++r) yt[r] = tmp[r - r0];
  };
  std::int64_t g = row_begin / q8_pack_rows;
  const std::int64_t g_first = g;
  const int passes = n / DUET_Q8_TILE_TOKENS + n % DUET_Q8_TILE_TOKENS;
  // The pair after group g's, for software pipelining over g's passes (pass_prefetch), if this
  // range has a group there.
  auto next_pair_plan = [&](std::int64_t g_last) {
    const std::int64_t next = (g_last / 2 + 1) * 2; // the next pair's first group
    return pass_prefetch(next < g_end ? pair_at(next / 2) : nullptr, pair_bytes, blocks, passes);
  };
  // A group alone: the first of its pair, or the first of the range, loads the pair (streams it
  // from memory, unless the group before it in this range prefetched it over its passes, and
  // prefetches the next pair over its own); the second of a pair finds its records in cache.
  auto alone = [&](std::int64_t g) DUET_Q8_TARGET {
    const bool loads = g % 2 == 0 || g == g_first;
    const pass_prefetch none(nullptr, 0, blocks, passes);
    const pass_prefetch plan = loads ? next_pair_plan(g) : none;
    const bool stream = loads && (passes < 2 || g == g_first);
    const std::uint8_t* pair = pair_at(g / 2);
    const int half = static_cast<int>(g % 2);
    int t = 0, pass = 0;
    __m256 out[DUET_Q8_TILE_TOKENS];
    for (; t + DUET_Q8_TILE_TOKENS <= n; t += DUET_Q8_TILE_TOKENS, ++pass) {
      packed_group<DUET_Q8_TILE_TOKENS>(pair, half, blocks, xq, xbias, t, out, t == 0 && stream,
                                        plan, plan.share(pass));
      for (int j = 0; j < DUET_Q8_TILE_TOKENS; ++j) store(g, t + j, out[j]);
    }
    for (; t < n; ++t, ++pass) {
      packed_group<1>(pair, half, blocks, xq, xbias, t, out, t == 0 && stream, plan,
                      plan.share(pass));
      store(g, t, out[0]);
    }
  };
#if DUET_Q8_ZMM
  if (g % 2 == 1 && g < g_end) alone(g++);
  for (; g + 1 < g_end; g += 2) {
    int t = 0;
    __m512 out[DUET_Q8_TILE_TOKENS];
    auto store_pair = [&](int tok, __m512 v) DUET_Q8_TARGET {
      const __m512d d = _mm512_castps_pd(v);
      store(g, tok, _mm256_castpd_ps(_mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xf, d, 0)));
      store(g + 1, tok,
            _mm256_castpd_ps(_mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xf, d, 1)));
    };
    const pass_prefetch plan = next_pair_plan(g);
    const bool stream = passes < 2 || g == g_first;
    const std::uint8_t* pair = pair_at(g / 2);
    int pass = 0;
    for (; t + DUET_Q8_TILE_TOKENS <= n; t += DUET_Q8_TILE_TOKENS, ++pass) {
      packed_pair<DUET_Q8_TILE_TOKENS>(pair, blocks, xq, xbias, t, out, t == 0 && stream, plan,
                                       plan.share(pass));
      for (int j = 0; j < DUET_Q8_TILE_TOKENS; ++j) store_pair(t + j, out[j]);
    }
    for (; t < n; ++t, ++pass) {
      packed_pair<1>(pair, blocks, xq, xbias, t, out, t == 0 && stream, plan, plan.share(pass));
      store_pair(t, out[0]);
    }
  }
#endif
  for (; g < g_end; ++g) alone(g);
  return std::max(row_begin, std::min(row_end, groups * q8_pack_rows));
}

/// q8_0 over n tokens of an input quantized by the caller (matmul_input). One token: 8-row gemv
/// groups streaming the weights (with prefetch); more: 2-row x 4-token tiles (the 2 rows,
/// 2 * 34 * cols / 32 bytes, stay in L1 while every token passes).
DUET_Q8_TARGET void matmul_q8_0(const tensor_view& w, const matmul_input& in, float* y,
                                std::int64_t y_stride, std::int64_t row_begin,
                                std::int64_t row_end) {
  const q8_activation_block* xq = in.q8();
  const int n = in.n();
  const std::int64_t blocks = w.cols / 32;
  std::int64_t r = row_begin;
  if (w.q8_packed != nullptr)
    r = matmul_packed(w, xq, in.q8_bias(), n, y, y_stride, row_begin, row_end);
  if (n == 1) {
    constexpr int R = 8; // 8 independent accumulator chains keep both FMA pipes busy
    for (; r + R <= row_end; r += R) gemv_q8_0<R>(w, r, xq, y);
    for (; r < row_end; ++r) gemv_q8_0<1>(w, r, xq, y);
    return;
  }
  auto rows_times_tokens = [&](auto rows_tag, std::int64_t r0) DUET_Q8_TARGET {
    constexpr int R = decltype(rows_tag)::value;
    int t = 0;
    for (; t + 4 <= n; t += 4) tile_q8_0<R, 4>(w, r0, xq, blocks, t, y, y_stride, t == 0);
    for (; t + 2 <= n; t += 2) tile_q8_0<R, 2>(w, r0, xq, blocks, t, y, y_stride, t == 0);
    for (; t < n; ++t) tile_q8_0<R, 1>(w, r0, xq, blocks, t, y, y_stride);
  };
  for (; r + DUET_Q8_TILE_ROWS <= row_end; r += DUET_Q8_TILE_ROWS)
    rows_times_tokens(std::integral_constant<int, DUET_Q8_TILE_ROWS>{}, r);
  for (; r + 2 <= row_end; r += 2) rows_times_tokens(std::integral_constant<int, 2>{}, r);
  for (; r < row_end; ++r) rows_times_tokens(std::integral_constant<int, 1>{}, r);
}

} // namespace DUET_Q8_NS

#undef DUET_Q8_NS
#undef DUET_Q8_TARGET
#undef DUET_Q8_DPBUSD
#undef DUET_Q8_UNSIGNED_X
#undef DUET_Q8_TILE_ROWS
#undef DUET_Q8_TILE_TOKENS
#undef DUET_Q8_ZMM
