"""Models: loading and building them (``loading``), GGUF conversion (``gguf``), batched generation
(``generation``), the reward-model judge and its checks (``judge``), the distilled judge (``distill``) and what the
training stages share on top of TRL (``training``)."""
