// The ensemble-MLP training ops called through the dispatcher from the whole-step ops
// (sac_update, dynamics_fit_step): below autograd, on whatever ISA the C++ ops run now.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <tuple>
#include <vector>

namespace pyscorepen {

// (out [E, B, out_L], saved activations) of pyscorepen::ensemble_mlp_forward.
inline std::tuple<at::Tensor, std::vector<at::Tensor>> call_forward(const at::Tensor& x, at::TensorList weights,
                                                                   at::TensorList biases,
                                                                   c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyscorepen::ensemble_mlp_forward", "")
                             .typed<std::tuple<at::Tensor, std::vector<at::Tensor>>(
                                 const at::Tensor&, at::TensorList, at::TensorList, c10::string_view)>();
  return op.call(x, weights, biases, activation);
}

// (grad_x, grad_weights, grad_biases) of pyscorepen::ensemble_mlp_backward; `mask` says which.
inline std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> call_backward(
    const at::Tensor& grad_out, const at::Tensor& x, at::TensorList weights, at::TensorList saved,
    c10::string_view activation, std::array<bool, 3> mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyscorepen::ensemble_mlp_backward", "")
          .typed<std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>(
              const at::Tensor&, const at::Tensor&, at::TensorList, at::TensorList, c10::string_view,
              std::array<bool, 3>)>();
  return op.call(grad_out, x, weights, saved, activation, mask);
}

}  // namespace pyscorepen
