// 2-D convolutions (forward, input gradient, weight gradient) as XLA FFI handlers
// computed by oneDNN.
//
// Layouts are JAX's: activations NHWC [N, H, W, C], kernels HWIO [KH, KW, C/g, O]
// with the O outputs group-major (flax's grouped `nn.Conv`). float32 only.
// Every handler takes one int64 array attribute `geometry`:
//   [stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
//    dilation_h, dilation_w, groups]
// with lax's conventions (dilation 1 = none; explicit, non-negative padding).
//
// Primitives are built once per (kind, shapes, geometry) and kept in a cache.
// Activations stay NHWC (oneDNN's AVX2/AVX-512 JIT kernels take them directly);
// kernels are reordered to the layout the primitive prefers (a blocked one), which
// costs a copy of the small weight tensor per call. The scratchpad is ours, per
// thread, so two XLA threads may run primitives at once.
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using Dims = dnnl::memory::dims;

namespace {

// A rank-4 float32 array (a macro argument takes no bare template commas).
using Tensor = ffi::Buffer<ffi::F32, 4>;

enum class Kind { kForward, kBackwardData, kBackwardWeights };

struct Geometry {
  int64_t n, h, w, c;         // input
  int64_t kh, kw, o;          // kernel and output channels
  int64_t oh, ow;             // output
  int64_t sh, sw, pt, pb, pl, pr, dh, dw, g;

  std::string Key(Kind kind) const {
    std::string key(reinterpret_cast<const char*>(this), sizeof(*this));
    key.push_back(static_cast<char>(kind));
    return key;
  }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::desc ActivationMd(int64_t n, int64_t h, int64_t w, int64_t c) {
  return memory::desc({n, c, h, w}, memory::data_type::f32, Tag::nhwc);
}

// The kernel as oneDNN sees it: OIHW, or GOIHW for groups > 1.
Dims WeightDims(const Geometry& q) {
  if (q.g == 1) return {q.o, q.c, q.kh, q.kw};
  return {q.g, q.o / q.g, q.c / q.g, q.kh, q.kw};
}

memory::desc UserWeightMd(const Geometry& q) {
  return memory::desc(WeightDims(q), memory::data_type::f32, q.g == 1 ? Tag::hwio : Tag::hwigo);
}

memory::desc AnyWeightMd(const Geometry& q) {
  return memory::desc(WeightDims(q), memory::data_type::f32, Tag::any);
}

// A conv primitive with the reorder between the user's HWIO kernel and the
// primitive's own kernel layout (absent when they are the same).
struct Entry {
  dnnl::primitive conv;
  memory::desc weight_md;       // the primitive's
  memory::desc user_weight_md;  // HWIO / HWIGO
  memory::desc scratch_md;
  bool reorder_weights = false;
  dnnl::reorder weight_reorder;  // user → primitive (forward, backward data),
                                 // primitive → user (backward weights)
};

struct Conv {
  Dims strides, dilates, pad_l, pad_r;
  memory::desc src, dst;
};

Conv ConvDescs(const Geometry& q) {
  return Conv{{q.sh, q.sw}, {q.dh - 1, q.dw - 1}, {q.pt, q.pl}, {q.pb, q.pr},
              ActivationMd(q.n, q.h, q.w, q.c), ActivationMd(q.n, q.oh, q.ow, q.o)};
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

#if DNNL_VERSION_MAJOR >= 3
dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& q, const Conv& d,
                                                    dnnl::prop_kind prop) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), prop, dnnl::algorithm::convolution_direct, d.src, AnyWeightMd(q), d.dst,
      d.strides, d.dilates, d.pad_l, d.pad_r, UserScratchpad());
}
#else
dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& q, const Conv& d,
                                                    dnnl::prop_kind prop) {
  dnnl::convolution_forward::desc desc(prop, dnnl::algorithm::convolution_direct, d.src,
                                       AnyWeightMd(q), d.dst, d.strides, d.dilates, d.pad_l,
                                       d.pad_r);
  return dnnl::convolution_forward::primitive_desc(desc, UserScratchpad(), Engine());
}
#endif

// The descriptor of a gradient primitive (P: convolution_backward_data or _weights, whose
// constructors take the same arguments), hinted by the forward training one.
template <typename P>
typename P::primitive_desc BackwardPd(const Geometry& q, const Conv& d) {
  auto hint = ForwardPd(q, d, dnnl::prop_kind::forward_training);
#if DNNL_VERSION_MAJOR >= 3
  return typename P::primitive_desc(Engine(), dnnl::algorithm::convolution_direct, d.src,
                                    AnyWeightMd(q), d.dst, d.strides, d.dilates, d.pad_l,
                                    d.pad_r, hint, UserScratchpad());
#else
  typename P::desc desc(dnnl::algorithm::convolution_direct, d.src, AnyWeightMd(q), d.dst,
                        d.strides, d.dilates, d.pad_l, d.pad_r);
  return typename P::primitive_desc(desc, UserScratchpad(), Engine(), hint);
#endif
}

Entry Build(const Geometry& q, Kind kind) {
  Conv d = ConvDescs(q);
  Entry e;
  e.user_weight_md = UserWeightMd(q);
  if (kind == Kind::kForward) {
    auto pd = ForwardPd(q, d, dnnl::prop_kind::forward_inference);
    e.conv = dnnl::convolution_forward(pd);
    e.weight_md = pd.weights_desc();
    e.scratch_md = pd.scratchpad_desc();
  } else if (kind == Kind::kBackwardData) {
    auto pd = BackwardPd<dnnl::convolution_backward_data>(q, d);
    e.conv = dnnl::convolution_backward_data(pd);
    e.weight_md = pd.weights_desc();
    e.scratch_md = pd.scratchpad_desc();
  } else {
    auto pd = BackwardPd<dnnl::convolution_backward_weights>(q, d);
    e.conv = dnnl::convolution_backward_weights(pd);
    e.weight_md = pd.diff_weights_desc();
    e.scratch_md = pd.scratchpad_desc();
  }
  e.reorder_weights = e.weight_md != e.user_weight_md;
  if (e.reorder_weights) {
    e.weight_reorder = kind == Kind::kBackwardWeights
                           ? dnnl::reorder(dnnl::reorder::primitive_desc(
                                 Engine(), e.weight_md, Engine(), e.user_weight_md))
                           : dnnl::reorder(dnnl::reorder::primitive_desc(
                                 Engine(), e.user_weight_md, Engine(), e.weight_md));
  }
  return e;
}

const Entry& Lookup(const Geometry& q, Kind kind) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<std::string, std::unique_ptr<Entry>>();
  std::string key = q.Key(kind);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it == cache->end()) {
    it = cache->emplace(key, std::make_unique<Entry>(Build(q, kind))).first;
  }
  return *it->second;
}

// Per-thread buffers: the primitive's scratchpad and the blocked kernel.
struct ThreadBuffers {
  std::vector<char> scratch, weights;
};

void* Grow(std::vector<char>& buffer, size_t bytes) {
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

ffi::Error ReadGeometry(ffi::Span<const int64_t> attr, Geometry& q) {
  if (attr.size() != 9) return ffi::Error::InvalidArgument("geometry must hold 9 integers");
  q.sh = attr[0]; q.sw = attr[1];
  q.pt = attr[2]; q.pb = attr[3]; q.pl = attr[4]; q.pr = attr[5];
  q.dh = attr[6]; q.dw = attr[7]; q.g = attr[8];
  return ffi::Error::Success();
}

// Runs one conv. x: NHWC input (or its gradient), w: HWIO kernel (or its
// gradient), y: NHWC output (or its gradient); the `kind` says which is written.
ffi::Error Run(Kind kind, const Geometry& q, float* x, float* w, float* y) {
  try {
    const Entry& e = Lookup(q, kind);
    thread_local ThreadBuffers buffers;
    dnnl::engine& engine = Engine();
    dnnl::stream stream(engine);
    Conv d = ConvDescs(q);
    memory src(d.src, engine, x), dst(d.dst, engine, y), user_w(e.user_weight_md, engine, w);
    memory prim_w = user_w;
    if (e.reorder_weights) {
      prim_w = memory(e.weight_md, engine, Grow(buffers.weights, e.weight_md.get_size()));
      if (kind != Kind::kBackwardWeights) e.weight_reorder.execute(stream, user_w, prim_w);
    }
    memory scratch(e.scratch_md, engine, Grow(buffers.scratch, e.scratch_md.get_size()));
    if (kind == Kind::kForward) {
      e.conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, prim_w},
                              {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == Kind::kBackwardData) {
      e.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_WEIGHTS, prim_w},
                              {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      e.conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, prim_w},
                              {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (e.reorder_weights) e.weight_reorder.execute(stream, prim_w, user_w);
    }
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("oneDNN: ") + err.what());
  }
  return ffi::Error::Success();
}

template <typename B>
void Shape4(const B& b, int64_t& a0, int64_t& a1, int64_t& a2, int64_t& a3) {
  auto dims = b.dimensions();
  a0 = dims[0]; a1 = dims[1]; a2 = dims[2]; a3 = dims[3];
}

ffi::Error Forward(ffi::Buffer<ffi::F32, 4> x, ffi::Buffer<ffi::F32, 4> w,
                   ffi::ResultBuffer<ffi::F32, 4> y, ffi::Span<const int64_t> geometry) {
  Geometry q{};
  if (auto err = ReadGeometry(geometry, q); err.failure()) return err;
  int64_t unused;
  Shape4(x, q.n, q.h, q.w, q.c);
  Shape4(w, q.kh, q.kw, unused, q.o);
  Shape4(*y, unused, q.oh, q.ow, unused);
  return Run(Kind::kForward, q, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32, 4> dy, ffi::Buffer<ffi::F32, 4> w,
                        ffi::ResultBuffer<ffi::F32, 4> dx, ffi::Span<const int64_t> geometry) {
  Geometry q{};
  if (auto err = ReadGeometry(geometry, q); err.failure()) return err;
  int64_t unused;
  Shape4(*dx, q.n, q.h, q.w, q.c);
  Shape4(w, q.kh, q.kw, unused, q.o);
  Shape4(dy, unused, q.oh, q.ow, unused);
  return Run(Kind::kBackwardData, q, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32, 4> x, ffi::Buffer<ffi::F32, 4> dy,
                           ffi::ResultBuffer<ffi::F32, 4> dw,
                           ffi::Span<const int64_t> geometry) {
  Geometry q{};
  if (auto err = ReadGeometry(geometry, q); err.failure()) return err;
  int64_t unused;
  Shape4(x, q.n, q.h, q.w, q.c);
  Shape4(*dw, q.kh, q.kw, unused, q.o);
  Shape4(dy, unused, q.oh, q.ow, unused);
  return Run(Kind::kBackwardWeights, q, x.typed_data(), dw->typed_data(), dy.typed_data());
}

}  // namespace

// Every handler's signature: two rank-4 operands, one rank-4 result, the geometry.
static auto ConvBinding() {
  return ffi::Ffi::Bind().Arg<Tensor>().Arg<Tensor>().Ret<Tensor>().Attr<ffi::Span<const int64_t>>(
      "geometry");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(CvjaxOnednnConvForward, Forward, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CvjaxOnednnConvBackwardData, BackwardData, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CvjaxOnednnConvBackwardWeights, BackwardWeights, ConvBinding());

// The oneDNN version the library was built against, as major*10000+minor*100+patch.
extern "C" int cvjax_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
