// Adam (Kingma & Ba 2015, Alg. 1) as torch.optim.Adam(fused=True) runs it, on caller-owned
// parameter and state tensors: shared by the whole-step ops (sac_update, dynamics_fit_step).
#pragma once
#include <ATen/ATen.h>

#include <cstddef>
#include <vector>

namespace pyscorepen {

// steps[i] += 1 (torch.optim.Adam's float32 step counters). One-element float32 CPU tensors, the
// ops' contract, are incremented in place through their pointers: the same float addition, without
// _foreach_add_'s per-tensor dispatch and scalar conversion (13 tensors, ~55 us of a 2-thread SAC
// update of ~3.5 ms, profiler, AMD EPYC Zen 4); other tensors take _foreach_add_.
inline void increment_steps(std::vector<at::Tensor>& steps) {
  for (const at::Tensor& s : steps)
    if (!(s.device().is_cpu() && s.scalar_type() == at::kFloat && s.numel() == 1)) {
      at::_foreach_add_(steps, 1);
      return;
    }
  for (at::Tensor& s : steps) *s.data_ptr<float>() += 1.0f;
}

// One step on params[i] with grads[i] and the state slices [first, first + params.size()) of
// exp_avgs / exp_avg_sqs / steps (the steps are incremented first, as torch.optim.Adam does).
// weight_decay adds weight_decay * param to the gradient (coupled L2, Adam's, not AdamW's).
inline void adam_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList steps, size_t first, double lr, double beta1,
                      double beta2, double eps, double weight_decay) {
  const size_t n = params.size();
  std::vector<at::Tensor> m(exp_avgs.begin() + first, exp_avgs.begin() + first + n);
  std::vector<at::Tensor> v(exp_avg_sqs.begin() + first, exp_avg_sqs.begin() + first + n);
  std::vector<at::Tensor> t(steps.begin() + first, steps.begin() + first + n);
  increment_steps(t);
  at::_fused_adam_(params, grads, m, v, at::TensorList(), t, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                   /*maximize=*/false);
}

}  // namespace pyscorepen
