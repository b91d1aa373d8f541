"""The learned models shared by every algorithm: networks (``nets``), the probabilistic
dynamics ensemble (``dynamics``) and the denoising score model (``score``)."""
