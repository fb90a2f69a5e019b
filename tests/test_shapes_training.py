"""The moving-shapes model's training choices (vidgen/shapes/models.py, training.py): a schedule whose
noisiest step holds nothing of the clean latents, the v-prediction loss on it, a frozen text encoder."""
import torch

from vidgen.shapes import models, training


def test_the_noisiest_training_step_holds_no_signal_and_sampling_starts_there():
    """At SD 1.5's own last step 7 % of the latents survive, enough on 8x8 latents to read where the
    shape is: a model then takes the layout from its input and never learns it from the caption."""
    from vidgen.sampling import FusedDDIMScheduler

    scheduler = models.build_scheduler()
    assert scheduler.config.prediction_type == "v_prediction"
    assert float(scheduler.alphas_cumprod[-1]) == 0.0 and float(scheduler.alphas_cumprod[0]) > 0.99
    sampler = FusedDDIMScheduler.from_config(scheduler.config)
    sampler.set_timesteps(20)
    assert int(sampler.timesteps[0]) == scheduler.config.num_train_timesteps - 1


class _Oracle(torch.nn.Module):
    """Knows the clean latents: predicts the exact v (or noise) of whatever noisy input it gets."""

    def __init__(self, clean: torch.Tensor, alphas_cumprod: torch.Tensor, target: str):
        super().__init__()
        self.clean, self.alphas_cumprod, self.target = clean, alphas_cumprod.double(), target

    def forward(self, noisy, timesteps, text):
        a = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        x, x0 = noisy.double(), self.clean.double()
        v = (a.sqrt() * x - x0) / (1 - a).sqrt()
        eps = a.sqrt() * v + (1 - a).sqrt() * x
        return type("Output", (), {"sample": (v if self.target == "v_prediction" else eps).float()})()


def test_the_prior_loss_targets_v_and_is_zero_only_for_the_exact_v():
    alphas_cumprod = models.build_scheduler().alphas_cumprod.float()
    clean = torch.randn(6, 8, 8, 8)
    text = torch.zeros(6, models.TOKENS, 32)
    for target, expect_zero in (("v_prediction", True), ("epsilon", False)):
        generator = torch.Generator().manual_seed(3)
        loss = training.image_diffusion_loss(_Oracle(clean, alphas_cumprod, target), clean, text, alphas_cumprod,
                                             generator, prediction_type="v_prediction")
        assert (float(loss) < 1e-8) == expect_zero, (target, float(loss))


def test_the_prior_trains_its_unet_against_a_frozen_text_encoder(tmp_path):
    tokenizer = models.build_tokenizer(str(tmp_path / "tokenizer"))
    latents = torch.randn(4, 8, models.LATENT_SIZE, models.LATENT_SIZE)
    captions = ["a red square moves left", "a blue circle moves up"] * 2
    unet, text_encoder = training.train_prior(latents, captions, tokenizer, steps=2, seed=0, batch_size=2,
                                              train_text_encoder=False)
    fresh_text, fresh_unet = models.build_text_encoder(tokenizer, 1), models.build_unet(0)
    assert all(torch.equal(a, b) for a, b in zip(text_encoder.state_dict().values(), fresh_text.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), fresh_unet.state_dict().values()))
