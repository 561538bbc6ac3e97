// The C++ route of codegen.torch_module: one generic extension, built once per machine and
// torch version (codegen/torch_native.py), that takes a derived layer's call out of Python.
//
// A NativeLayer holds one layer's compact plan: the addresses of its generated C forward and
// backward entry points, where each kernel argument comes from (the call's tensors, then the
// module's parameters), which are integer labels, and which forward results are outputs and
// which the backward reuses.  A call checks every tensor (exact torch.Tensor or Parameter, on
// the CPU, of the module's dtype, contiguous), finds the plan of their shapes (the sizes of
// every dimension, the results' shapes, the work buffers: made once per set of shapes by the
// Python planner, through the C wrapper's own checks, whose error it raises), allocates the
// results from torch's CPU allocator, calls the C entry point and, when there is a graph to
// record, attaches a KernelBackward node that calls the backward entry point.
//
// A bound NativeLayer is the module's forward (an instance attribute over the class's).
// Anything unusual (a wrong dtype, a strided or CUDA tensor, a label out of range, a target
// that requires grad) goes to the class's forward, the Python route, which gives the error
// message (one place for every message) or handles the case.
//
// Headers: only what the file uses.  <torch/extension.h> (the whole C++ frontend) made the
// build 55 s on one core of a Zen 1 EPYC; these take 34 (python_variable.h alone is 23).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/EmptyTensor.h>
#include <c10/util/SmallVector.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

namespace {

// ---- calling a C entry point of any arity ---------------------------------------------------
// Every argument of a generated entry point is a ptrdiff_t size or a pointer: one machine
// word each, so a function of n words is called through the type int(word, ..., word) of
// that arity, picked from a table made at compile time.
using Word = std::intptr_t;
using Caller = int (*)(void*, const Word*);
constexpr std::size_t MAX_WORDS = 96;

template <std::size_t... I>
int call_words(void* f, const Word* a, std::index_sequence<I...>) {
  using Fn = int (*)(decltype((void)I, Word{})...);
  return reinterpret_cast<Fn>(f)(a[I]...);
}

template <std::size_t N>
int call_n(void* f, const Word* a) {
  return call_words(f, a, std::make_index_sequence<N>{});
}

template <std::size_t... N>
constexpr std::array<Caller, sizeof...(N)> callers(std::index_sequence<N...>) {
  return {&call_n<N>...};
}

constexpr auto CALLERS = callers(std::make_index_sequence<MAX_WORDS + 1>{});

Word word(const at::Tensor& t) { return reinterpret_cast<Word>(t.data_ptr()); }

// ---- what a set of input shapes needs ----------------------------------------------------
struct Plan {
  std::vector<Word> dims;                           // as the entry points take them first
  std::vector<std::vector<int64_t>> returns;        // forward's results' shapes
  std::vector<std::vector<int64_t>> gradients;      // backward's results' shapes
  int64_t forward_work = 0, backward_work = 0;      // elements of each work buffer
  std::vector<int64_t> label_limits;                // per argument: labels < this (-1: none)
  bool release_gil = false;          // work enough to let other Python threads run meanwhile
};

// ---- one layer: everything fixed at construction ----------------------------------------
struct Layout {
  std::string name;
  void* forward = nullptr;
  void* backward = nullptr;
  void (*hold)() = nullptr;            // called around each entry point (OpenBLAS held on
  void (*release)() = nullptr;         // one thread: codegen.blas.one_thread), or null
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> arg_at;         // kernel argument -> index in (inputs, parameters)
  std::vector<bool> is_label;          // kernel argument -> integer labels (int64)
  std::vector<int64_t> no_gradient;    // kernel arguments without a gradient
  std::vector<int64_t> output_at;      // layer output -> index in forward's results
  std::vector<int64_t> reuse_at;       // reused by backward -> index in forward's results
  std::vector<int64_t> returned;       // node outputs -> index in forward's results
  std::vector<int64_t> upstream_at;    // backward's upstream gradients -> node output
  std::vector<int64_t> gradient_at;    // kernel argument -> index in backward's (-1: none)
  int64_t pick = -1;                   // the output forward returns (-1: all, a tuple)
  int64_t scale_at = -1;               // node output whose gradient scales a loss's
};

using Words = c10::SmallVector<Word, 32>;

void run(const Layout& l, void* entry, const Words& words, bool release_gil) {
  int status;
  {
    std::optional<py::gil_scoped_release> nogil;   // backward runs without the GIL already
    if (release_gil && PyGILState_Check()) nogil.emplace();
    if (l.hold) l.hold();
    status = CALLERS[words.size()](entry, words.data());
    if (l.release) l.release();
  }
  TORCH_CHECK(status == 0, l.name, ": the C kernel refused the sizes (status ", status,
              "); please report this");
}

// A result's memory, straight from the CPU allocator (at::empty's dispatch costs more than
// the allocation here).
at::Tensor fresh(at::IntArrayRef shape, at::ScalarType dtype) {
  return at::Tensor(at::detail::empty_cpu(shape, dtype, false, std::nullopt));
}

// An entry point's results, fresh: their pointers and the work buffer's go after the
// inputs' in `words`, then the entry point is called.
c10::SmallVector<at::Tensor, 8> results_of(const Layout& l, void* entry, Words& words,
                                           const std::vector<std::vector<int64_t>>& shapes,
                                           int64_t work_size, bool release_gil) {
  c10::SmallVector<at::Tensor, 8> out;
  for (auto& shape : shapes) {
    out.push_back(fresh(shape, l.dtype));
    words.push_back(word(out.back()));
  }
  at::Tensor work;
  if (work_size) work = fresh({work_size}, l.dtype);
  words.push_back(work_size ? word(work) : 0);
  run(l, entry, words, release_gil);
  return out;
}

// ---- the backward node --------------------------------------------------------------------
struct KernelBackward : public torch::autograd::Node {
  std::shared_ptr<const Layout> layout;
  std::shared_ptr<const Plan> plan;
  std::vector<SavedVariable> args, reused;

  std::string name() const override { return layout->name + "KernelBackward"; }

  void release_variables() override {
    args.clear();
    reused.clear();
  }

  variable_list apply(variable_list&& grads) override {
    const Layout& l = *layout;
    TORCH_CHECK(!at::GradMode::is_enabled(), l.name,
                ": double backward (create_graph=True, a gradient of a gradient) is not "
                "supported: the derived kernels give first derivatives only");
    TORCH_CHECK(!args.empty() || l.arg_at.empty(), l.name,
                ": backward through the graph a second time (retain_graph=True keeps it)");
    auto self = getptr();
    Words words(plan->dims.begin(), plan->dims.end());
    c10::SmallVector<at::Tensor, 16> keep;      // tensors whose memory the call reads
    for (auto& s : args) keep.push_back(s.unpack(self));
    for (int64_t u : l.upstream_at) {
      at::Tensor g = grads[u];
      if (!g.defined())                // an output the loss did not use
        g = at::zeros(plan->returns[l.returned[u]], at::TensorOptions().dtype(l.dtype));
      else if (g.scalar_type() != l.dtype || !g.is_contiguous())
        g = g.to(l.dtype).contiguous();   // a sum's gradient arrives expanded (strided)
      keep.push_back(g);
    }
    for (auto& s : reused) keep.push_back(s.unpack(self));
    for (auto& t : keep) words.push_back(word(t));
    auto out = results_of(l, l.backward, words, plan->gradients, plan->backward_work, false);
    variable_list result(l.arg_at.size());
    for (std::size_t k = 0; k < result.size(); ++k)
      if (l.gradient_at[k] >= 0 && should_compute_output(k))
        result[k] = out[l.gradient_at[k]];
    if (l.scale_at >= 0) scale(result, grads[l.scale_at]);
    return result;
  }

  // A loss's gradients are per unit of the loss: times its upstream gradient.
  void scale(variable_list& result, const at::Tensor& g) const {
    if (g.defined() && g.is_cpu() && g.scalar_type() == layout->dtype && g.numel() == 1) {
      double v = layout->dtype == at::kDouble ? *g.const_data_ptr<double>()
                                              : *g.const_data_ptr<float>();
      if (v == 1.0) return;            // backward() of the loss itself: nothing to do
    }
    for (auto& r : result)
      if (r.defined()) {
        if (g.defined()) r.mul_(g); else r.zero_();
      }
  }
};

// ---- the layer, as Python sees it ---------------------------------------------------------
struct ShapesHash {
  std::size_t operator()(const std::vector<int64_t>& v) const noexcept {
    std::size_t h = v.size();
    for (int64_t x : v) h ^= std::hash<int64_t>{}(x) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
  }
};

constexpr std::size_t MAX_PLANS = 64;   // as codegen.torch_calls.MAX_SHAPES

class NativeLayer {
 public:
  NativeLayer(std::string name, Word forward, Word backward, Word hold, Word release,
              bool is_double,
              std::vector<int64_t> arg_at, std::vector<bool> is_label,
              std::vector<std::string> param_names, int64_t n_inputs,
              std::vector<int64_t> no_gradient, std::vector<int64_t> output_at,
              std::vector<int64_t> reuse_at, std::vector<int64_t> returned,
              std::vector<int64_t> upstream_at, std::vector<int64_t> gradient_at,
              int64_t pick, int64_t scale_at, py::function planner)
      : n_inputs_(n_inputs), planner_(std::move(planner)) {
    auto l = std::make_shared<Layout>();
    l->name = std::move(name);
    l->forward = reinterpret_cast<void*>(forward);
    l->backward = reinterpret_cast<void*>(backward);
    l->hold = reinterpret_cast<void (*)()>(hold);
    l->release = reinterpret_cast<void (*)()>(release);
    l->dtype = is_double ? at::kDouble : at::kFloat;
    l->arg_at = std::move(arg_at);
    l->is_label = std::move(is_label);
    l->no_gradient = std::move(no_gradient);
    l->output_at = std::move(output_at);
    l->reuse_at = std::move(reuse_at);
    l->returned = std::move(returned);
    l->upstream_at = std::move(upstream_at);
    l->gradient_at = std::move(gradient_at);
    l->pick = pick;
    l->scale_at = scale_at;
    for (auto& n : param_names) param_names_.push_back(py::str(n));
    layout_ = std::move(l);
  }

  // The layer's output(s) for the call's tensors and the module's parameters (a dict), or
  // None: take the Python route.
  py::object call(const py::tuple& tensors, const py::dict& parameters) {
    const Layout& l = *layout_;
    if (static_cast<int64_t>(tensors.size()) != n_inputs_) return py::none();
    c10::SmallVector<at::Tensor, 8> args;
    c10::SmallVector<int64_t, 24> key;
    bool recording = false;
    for (std::size_t k = 0; k < l.arg_at.size(); ++k) {
      int64_t at = l.arg_at[k];
      PyObject* obj = at < n_inputs_ ? PyTuple_GET_ITEM(tensors.ptr(), at)
                                     : PyDict_GetItem(parameters.ptr(),
                                                      param_names_[at - n_inputs_].ptr());
      if (!obj || !THPVariable_CheckExact(obj)) return py::none();
      const at::Tensor& t = THPVariable_Unpack(obj);
      if (!t.defined() || !t.is_cpu() || t.layout() != at::kStrided ||
          t.scalar_type() != (l.is_label[k] ? at::kLong : l.dtype) || !t.is_contiguous())
        return py::none();
      key.push_back(t.dim());
      for (int64_t s : t.sizes()) key.push_back(s);
      recording = recording || t.requires_grad();
      args.push_back(t);
    }
    recording = recording && l.backward && at::GradMode::is_enabled();
    if (recording)
      for (int64_t k : l.no_gradient)
        if (args[k].requires_grad()) return py::none();   // refused, with its message
    std::shared_ptr<const Plan> plan = plan_of(key, tensors, parameters);
    for (std::size_t k = 0; k < args.size(); ++k)
      if (plan->label_limits[k] >= 0 && !in_range(args[k], plan->label_limits[k]))
        return py::none();                                  // named by the Python route
    Words words(plan->dims.begin(), plan->dims.end());
    for (auto& t : args) words.push_back(word(t));
    auto out = results_of(l, l.forward, words, plan->returns, plan->forward_work,
                          plan->release_gil);
    if (recording) record(args, out, plan);
    if (l.pick >= 0) return wrap(out[l.output_at[l.pick]]);
    py::tuple outputs(l.output_at.size());
    for (std::size_t i = 0; i < l.output_at.size(); ++i)
      outputs[i] = wrap(out[l.output_at[i]]);
    return std::move(outputs);
  }

  // Bind to the module: its parameters (the dict itself, which torch updates in place) and
  // a weak reference, for the calls the Python route takes (no cycle keeps the module).
  void bind(const py::object& module) {
    parameters_ = module.attr("_parameters");
    module_ = py::weakref(module);
  }

  // module.forward on the C++ route: the call, or the Python route for an unusual one.
  py::object forward(const py::args& tensors) {
    py::object out = call(tensors, parameters_);
    if (!out.is_none()) return out;
    py::object module = module_();
    TORCH_CHECK(!module.is_none(), layout_->name, ": the module of this forward is gone");
    return py::type::of(module).attr("forward")(module, *tensors);
  }

  std::size_t plans() const { return plans_.size(); }

 private:
  static py::object wrap(const at::Tensor& t) {
    return py::reinterpret_steal<py::object>(THPVariable_Wrap(t));
  }

  static bool in_range(const at::Tensor& t, int64_t limit) {
    const int64_t* v = t.const_data_ptr<int64_t>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i)
      if (v[i] < 0 || v[i] >= limit) return false;
    return true;
  }

  // The plan of these shapes: kept, or made (and the shapes checked) by the Python planner.
  template <typename Key>
  std::shared_ptr<const Plan> plan_of(const Key& key, const py::tuple& tensors,
                                      const py::dict& parameters) {
    if (last_plan_ && std::equal(key.begin(), key.end(), last_key_.begin(), last_key_.end()))
      return last_plan_;                         // the common case: the shapes of last call
    std::vector<int64_t> shapes(key.begin(), key.end());
    auto found = plans_.find(shapes);
    if (found != plans_.end()) return remember(std::move(shapes), found->second);
    const Layout& l = *layout_;
    py::tuple args(l.arg_at.size());
    for (std::size_t k = 0; k < l.arg_at.size(); ++k) {
      int64_t at = l.arg_at[k];
      args[k] = at < n_inputs_ ? py::object(tensors[at])
                               : py::object(parameters[param_names_[at - n_inputs_]]);
    }
    py::tuple got = planner_(args);              // raises the C wrapper's shape errors
    auto plan = std::make_shared<Plan>();
    for (auto d : got[0].cast<std::vector<int64_t>>()) plan->dims.push_back(d);
    plan->returns = got[1].cast<std::vector<std::vector<int64_t>>>();
    plan->gradients = got[2].cast<std::vector<std::vector<int64_t>>>();
    plan->forward_work = got[3].cast<int64_t>();
    plan->backward_work = got[4].cast<int64_t>();
    plan->label_limits = got[5].cast<std::vector<int64_t>>();
    int64_t elements = 0;
    for (auto& shape : plan->returns) elements += c10::multiply_integers(shape);
    plan->release_gil = elements >= (1 << 14);
    std::size_t words = plan->dims.size() + l.arg_at.size() + plan->returns.size() + 1;
    std::size_t back = plan->dims.size() + l.arg_at.size() + l.upstream_at.size() +
                       l.reuse_at.size() + plan->gradients.size() + 1;
    TORCH_CHECK(words <= MAX_WORDS && back <= MAX_WORDS, l.name, ": the C entry points take ",
                std::max(words, back), " arguments; the C++ route calls up to ", MAX_WORDS);
    if (plans_.size() >= MAX_PLANS) plans_.erase(plans_.begin());
    plans_.emplace(shapes, plan);
    return remember(std::move(shapes), plan);
  }

  std::shared_ptr<const Plan> remember(std::vector<int64_t>&& shapes,
                                       std::shared_ptr<const Plan> plan) {
    last_key_ = std::move(shapes);
    return last_plan_ = std::move(plan);
  }

  void record(at::ArrayRef<at::Tensor> args, at::ArrayRef<at::Tensor> out,
              const std::shared_ptr<const Plan>& plan) {
    const Layout& l = *layout_;
    auto node = c10::make_intrusive<KernelBackward>();
    node->layout = layout_;
    node->plan = plan;
    node->set_next_edges(torch::autograd::collect_next_edges(args));
    for (auto& t : args) node->args.emplace_back(t, false);
    for (int64_t r : l.returned) torch::autograd::set_history(out[r], node);
    for (int64_t r : l.reuse_at) {
      bool is_output = std::find(l.returned.begin(), l.returned.end(), r) != l.returned.end();
      node->reused.emplace_back(out[r], is_output);   // an output: saved without its node
    }
  }

  std::shared_ptr<const Layout> layout_;
  int64_t n_inputs_;
  std::vector<py::str> param_names_;
  py::dict parameters_;
  py::weakref module_;
  py::function planner_;
  std::unordered_map<std::vector<int64_t>, std::shared_ptr<const Plan>, ShapesHash> plans_;
  std::vector<int64_t> last_key_;              // the shapes of the last call, and their plan
  std::shared_ptr<const Plan> last_plan_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "codegen.torch_module's C++ route (codegen/torch_native.cpp)";
  py::class_<NativeLayer, std::shared_ptr<NativeLayer>>(m, "NativeLayer")
      .def(py::init<std::string, Word, Word, Word, Word, bool, std::vector<int64_t>,
                    std::vector<bool>, std::vector<std::string>, int64_t, std::vector<int64_t>,
                    std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                    std::vector<int64_t>, std::vector<int64_t>, int64_t, int64_t,
                    py::function>())
      .def("bind", &NativeLayer::bind)
      .def("__call__", &NativeLayer::forward)
      .def_property_readonly("plans", &NativeLayer::plans);
}
