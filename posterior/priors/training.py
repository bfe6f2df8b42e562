"""Training the bundled priors: denoising score matching with EMA, and the noise-level classifier.

Denoising score matching in EDM form (Karras et al. 2022, section 5): ``sigma ~ LogNormal(P_mean,
P_std)``, mixed with probability ``p_uniform`` with a log-uniform draw over the whole range
``[sigma_min, sigma_max]`` (EDM's log-normal alone almost never visits ``sigma > 3``, where a first
training run then denoised worse than a Gaussian fitted to the data), loss ``lambda(sigma) ||D(x0 + sigma eps; sigma) - x0||^2`` with
``lambda = (sigma^2 + sd^2) / (sigma sd)^2``, Adam with a linear warm-up, and an exponential moving
average of the weights (the EMA weights are the ones shipped). Checkpoints (weights, EMA, optimiser,
RNG state and step) are written atomically every ``checkpoint_every`` steps; ``resume=True``
continues from the last one, bit-identically on the CPU (on CUDA only with
``torch.use_deterministic_algorithms(True)``, since some convolution gradients are not deterministic).

The network is a :class:`GaussianResidualUNet`: it learns the residual of the exact denoiser of a
Gaussian fitted to the recipe's reference images (``Recipe.reference``; parametrisation
``"edm-gaussian"``), so that it starts as that Gaussian's MMSE denoiser and, where the noise dominates,
stays close to it.

Recipes (data, network size, noise range, steps) are in :data:`RECIPES`; ``posterior train NAME``
runs one and writes the weight files that :func:`posterior.priors.pretrained` loads.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from posterior.priors.network import NetworkPrior
from posterior.priors.noise_level import NoiseLevelClassifier, log_uniform_grid
from posterior.priors.schedules import EDMSchedule
from posterior.priors.unet import GaussianResidualUNet, UNet, count_parameters
from posterior.utils import atomic_write, make_generator, progress_bar

FORMAT_PRIOR = "posterior.prior/1"
GAUSSIAN_FIT_SIZE = 10_000  # reference images of the generated data sets (digits has its 1500)
FORMAT_CLASSIFIER = "posterior.noise-classifier/1"


@cache
def _digits_train() -> Tensor:
    from posterior.data import digits

    return digits("train")


def _digits_batch(n: int, generator: torch.Generator) -> Tensor:
    data = _digits_train()
    return data[torch.randint(len(data), (n,), generator=generator)]


def _digits_held_out() -> Tensor:
    from posterior.data import digits

    return digits("test")


def _phantoms_batch(n: int, generator: torch.Generator) -> Tensor:
    from posterior.data import phantoms

    return phantoms(n, 32, generator)


def _phantoms_held_out() -> Tensor:
    from posterior.data import phantoms

    return phantoms(300, 32, seed=10_000)


def _phantoms_reference() -> Tensor:
    from posterior.data import phantoms

    return phantoms(GAUSSIAN_FIT_SIZE, 32, seed=1)


# ultrasound: patch side, pool size, frame grid, and the band-limited width the frames are resampled to
US_PATCH, US_POOL, US_FRAME, US_WIDTH = 32, 16_384, (512, 256), 64


@cache
def ultrasound_pool(source: str) -> Tensor:
    """The 16,384 training patches of ``us-tissue`` or ``us-haze`` (``source`` ``"tissue"`` or ``"haze"``),
    unflipped, shape ``(16384, 1, 32, 32)``; cached, so do not modify it in place."""
    if source not in ("tissue", "haze"):
        raise ValueError(f"source must be 'tissue' or 'haze', got {source!r}")
    from posterior.data import ultrasound_patches

    samples, lines = US_FRAME
    tissue, haze = ultrasound_patches(
        US_POOL, US_PATCH, seed=1, lines=lines, samples=samples, per_frame=64, width=US_WIDTH
    )
    return tissue if source == "tissue" else haze


def _ultrasound_batch(source: str) -> Callable[[int, torch.Generator], Tensor]:
    """Patches from the pool with random left-right and RF sign flips (nearly symmetries of the simulated
    frames: see :func:`_ultrasound_reference`)."""

    def batch(n: int, generator: torch.Generator) -> Tensor:
        pool = ultrasound_pool(source)
        x = pool[torch.randint(len(pool), (n,), generator=generator)]
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x * torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)[:, None, None, None]

    return batch


def _ultrasound_reference(source: str) -> Callable[[], Tensor]:
    """10,000 flipped pool patches, as in training. The held-out patches are not flipped: a Gaussian fitted
    to unflipped patches denoises them slightly better (benchmarks/priors.py, docs/priors.md)."""

    def reference() -> Tensor:
        return _ultrasound_batch(source)(GAUSSIAN_FIT_SIZE, torch.Generator().manual_seed(1))

    return reference


def _ultrasound_held_out(source: str) -> Callable[[], Tensor]:
    def held_out() -> Tensor:
        from posterior.data import ultrasound_patches

        samples, lines = US_FRAME
        tissue, haze = ultrasound_patches(
            300, US_PATCH, seed=10_000, lines=lines, samples=samples, per_frame=64, width=US_WIDTH
        )
        return tissue if source == "tissue" else haze

    return held_out


@dataclass(frozen=True)
class Recipe:
    """How one bundled prior is trained: its data, network, noise range and optimisation."""

    name: str
    description: str
    batch: Callable[[int, torch.Generator], Tensor]
    held_out: Callable[[], Tensor]
    # Training images without augmentation that changes their distribution (digits: the 1500 unshifted;
    # phantoms: 10,000 generated) or, for ultrasound, flipped as in training (the shipped weights were fit
    # so; benchmarks/priors.py also scores a Gaussian of unflipped patches). The network's Gaussian and the
    # yardsticks of benchmarks/priors.py are fit to them, whatever the training seed.
    reference: Callable[[], Tensor]
    event_shape: tuple[int, int, int]
    widths: tuple[int, ...]
    steps: int
    batch_size: int
    lr: float = 2e-3
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2
    p_uniform: float = 0.25
    ema_decay: float = 0.999
    classifier_levels: int = 40
    classifier_sigma_min: float = 0.01
    classifier_steps: int = 1500
    lines_per_column: int = 1  # lateral band-limited resampling of the training frames (ultrasound: 4)


RECIPES = {
    "digits": Recipe(
        name="digits",
        description="scikit-learn's digits (1500 training images of the fixed split; 297 held out), 8x8 "
        "upsampled bilinearly to 16x16, values in [0, 1], no augmentation",
        batch=_digits_batch,
        held_out=_digits_held_out,
        reference=_digits_train,
        event_shape=(1, 16, 16),
        widths=(32, 64, 64),
        steps=3000,
        batch_size=64,
        classifier_steps=3000,
    ),
    "phantoms": Recipe(
        name="phantoms",
        description="procedurally generated CT-style ellipse phantoms at 32x32, values in [0, 1] "
        "(posterior.data.phantoms, a fresh batch every step; held-out set seed 10000)",
        batch=_phantoms_batch,
        held_out=_phantoms_held_out,
        reference=_phantoms_reference,
        event_shape=(1, 32, 32),
        widths=(16, 32, 64, 64),
        steps=4000,
        batch_size=32,
    ),
    **{
        f"us-{source}": Recipe(
            name=f"us-{source}",
            description=f"32x32 patches of mu-law companded {source} RF from simulated 256-line x "
            "512-sample echocardiography frames, band-limited resampled to 64 columns (a patch sees 128 "
            "lines: 40 degrees x 7 mm) (posterior.data.ultrasound_patches(width=64), a pool of 16,384 "
            "patches, seed 1; random left-right and sign flips; held-out seed 10000)",
            batch=_ultrasound_batch(source),
            held_out=_ultrasound_held_out(source),
            reference=_ultrasound_reference(source),
            event_shape=(1, US_PATCH, US_PATCH),
            widths=(16, 32, 64, 64),
            steps=2500,
            batch_size=32,
            sigma_data=sigma_data,
            classifier_steps=0,
            lines_per_column=US_FRAME[1] // US_WIDTH,
        )
        for source, sigma_data in (("tissue", 0.7), ("haze", 0.45))
    },
}


def build_prior(net: UNet, recipe_or_meta) -> NetworkPrior:
    """The :class:`NetworkPrior` of a UNet trained with EDM preconditioning (``"edm-gaussian"`` for a
    :class:`GaussianResidualUNet`)."""
    get = recipe_or_meta.get if isinstance(recipe_or_meta, dict) else lambda k: getattr(recipe_or_meta, k)
    schedule = EDMSchedule(get("sigma_min"), get("sigma_max"), get("sigma_data"))
    parametrization = "edm-gaussian" if isinstance(net, GaussianResidualUNet) else "edm"
    return NetworkPrior(
        net, parametrization=parametrization, schedule=schedule, event_shape=tuple(get("event_shape"))
    )


def denoising_loss(prior: NetworkPrior, x0: Tensor, recipe: Recipe, generator: torch.Generator) -> Tensor:
    """EDM's weighted denoising loss on a batch ``x0`` of shape ``(n, *event_shape)`` (a scalar)."""
    n = x0.shape[0]
    log_normal = recipe.p_mean + recipe.p_std * torch.randn(n, generator=generator)
    lo, hi = math.log(recipe.sigma_min), math.log(recipe.sigma_max)
    log_uniform = lo + (hi - lo) * torch.rand(n, generator=generator)
    uniform = torch.rand(n, generator=generator) < recipe.p_uniform
    sigma = torch.exp(torch.where(uniform, log_uniform, log_normal)).to(x0)
    noise = torch.randn(x0.shape, generator=generator).to(x0) * sigma.reshape(-1, 1, 1, 1)
    sd = recipe.sigma_data
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return (weight * (prior.denoise(x0 + noise, sigma) - x0).pow(2).mean(dim=(1, 2, 3))).mean()


def _save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path) -> dict:
    # tensors and plain containers only (never a pickle of code); on the CPU first, wherever it was written
    return torch.load(path, weights_only=True, map_location="cpu")


def _save_weights(path: Path, module: nn.Module, metadata: dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _train_loop(
    model: nn.Module,
    loss_fn: Callable[[torch.Generator], Tensor],
    *,
    steps: int,
    lr: float,
    ema_decay: float | None,
    seed: int,
    checkpoint: Path,
    checkpoint_every: int,
    resume: bool,
    progress: bool,
    desc: str,
    run: dict,
) -> tuple[nn.Module, list[float]]:
    """Adam with linear warm-up over 200 steps, optional EMA, atomic checkpoints; returns (EMA or model, losses).

    ``run`` (recipe, seed, lr, ...) is stored in the checkpoint; resuming a checkpoint of another run,
    or one already past ``steps``, raises.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    generator, _ = make_generator(seed, "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    ema = copy.deepcopy(model).requires_grad_(False) if ema_decay is not None else None
    start, losses = 0, []
    if resume and not checkpoint.exists():
        warnings.warn(f"resume=True but {checkpoint} does not exist; training from scratch", stacklevel=3)
    if resume and checkpoint.exists():
        state = _load_checkpoint(checkpoint)
        if state.get("run") != run:
            raise ValueError(f"{checkpoint} belongs to another run: {state.get('run')} != {run}")
        if int(state["step"]) > steps:
            raise ValueError(f"{checkpoint} is at step {state['step']}, past the requested steps={steps}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        start, losses = int(state["step"]), list(state["losses"])
    for step in progress_bar(range(start, steps), progress, desc):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 200)
        loss = loss_fn(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"{desc}: loss is {losses[-1]} at step {step}")
        if ema is not None:
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - ema_decay)
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step + 1,
                "run": run,
            }
            state.update(generator=generator.get_state(), losses=losses)
            if ema is not None:
                state["ema"] = ema.state_dict()
            _save_checkpoint(checkpoint, state)
    return (ema if ema is not None else model), losses


def train_prior(
    name: str,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    checkpoint_every: int = 250,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> Path:
    """Train the denoiser of recipe ``name``; writes ``{name}.safetensors`` (EMA weights) in ``out_dir``.

    ``seed`` sets the initialisation and the training batches; the network's Gaussian is fitted to
    ``recipe.reference()`` whatever the seed. Returns the path of the weight file. The checkpoint
    ``{name}.ckpt`` beside it allows ``resume``.
    """
    recipe = RECIPES[name]
    steps = steps if steps is not None else recipe.steps
    out_dir = Path(out_dir)
    torch.manual_seed(seed)  # network initialisation
    net = GaussianResidualUNet(recipe.event_shape, recipe.widths)
    net.fit_gaussian(recipe.reference())
    net = net.to(device)
    prior = build_prior(net, recipe)
    start = time.perf_counter()
    ema, losses = _train_loop(
        net,
        lambda g: denoising_loss(prior, recipe.batch(recipe.batch_size, g).to(device), recipe, g),
        steps=steps,
        lr=recipe.lr,
        ema_decay=recipe.ema_decay,
        seed=seed,
        checkpoint=out_dir / f"{name}.ckpt",
        checkpoint_every=checkpoint_every,
        resume=resume,
        progress=progress,
        desc=f"train {name}",
        run={
            "recipe": name,
            "kind": "prior",
            "net": "gaussian-residual",
            "seed": seed,
            "lr": recipe.lr,
            "batch_size": recipe.batch_size,
        },
    )
    meta = {k: v for k, v in asdict(recipe).items() if not callable(v)}
    meta.update(
        format=FORMAT_PRIOR,
        unet=net.config,
        trained_steps=steps,
        seed=seed,
        parameters=count_parameters(net),
        final_loss=sum(losses[-100:]) / max(1, len(losses[-100:])),
        seconds_this_run=time.perf_counter() - start,
        command=f"posterior train {name} --steps {steps} --seed {seed}",
    )
    path = out_dir / f"{name}.safetensors"
    _save_weights(path, ema, meta)
    return path


def classifier_accuracy(classifier: NoiseLevelClassifier, x0: Tensor, generator: torch.Generator) -> dict:
    """Accuracy of the noise-level classifier on clean images ``x0`` noised at uniformly drawn levels.

    Returns the exact-level accuracy, the within-one-level accuracy and the RMS error in ``log sigma``
    of the posterior-mean estimate.
    """
    k = torch.randint(classifier.sigmas.numel(), (x0.shape[0],), generator=generator)
    sigma = classifier.sigmas[k].to(x0)
    x = x0 + sigma.reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=generator).to(x0)
    with torch.no_grad():
        pred = classifier(x).argmax(1).cpu()
        log_err = torch.log(classifier.predict_sigma(x)) - torch.log(sigma)
    return {
        "exact": float((pred == k).float().mean()),
        "within_one_level": float(((pred - k).abs() <= 1).float().mean()),
        "rms_log_sigma_error": float(log_err.pow(2).mean().sqrt()),
    }


def train_noise_classifier(
    name: str,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    checkpoint_every: int = 250,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> Path:
    """Train the noise-level classifier of recipe ``name``; writes ``{name}-noise.safetensors``.

    The grid has ``recipe.classifier_levels`` log-uniform levels from ``classifier_sigma_min`` to
    ``sigma_max``; the held-out accuracy goes into the file's metadata.
    """
    recipe = RECIPES[name]
    steps = steps if steps is not None else recipe.classifier_steps
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    sigmas = log_uniform_grid(recipe.classifier_sigma_min, recipe.sigma_max, recipe.classifier_levels)
    classifier = NoiseLevelClassifier(recipe.event_shape[0], sigmas).to(device)

    def loss_fn(g: torch.Generator) -> Tensor:
        x0 = recipe.batch(128, g).to(device)
        k = torch.randint(sigmas.numel(), (x0.shape[0],), generator=g)
        x = x0 + classifier.sigmas[k].reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g).to(x0)
        return F.cross_entropy(classifier(x), k.to(device))

    trained, _ = _train_loop(
        classifier,
        loss_fn,
        steps=steps,
        lr=1e-3,
        ema_decay=None,
        seed=seed,
        checkpoint=out_dir / f"{name}-noise.ckpt",
        checkpoint_every=checkpoint_every,
        resume=resume,
        progress=progress,
        desc=f"train {name} noise classifier",
        run={"recipe": name, "kind": "classifier", "seed": seed, "lr": 1e-3, "batch_size": 128},
    )
    accuracy = classifier_accuracy(trained, recipe.held_out().to(device), torch.Generator().manual_seed(1))
    meta = {
        "format": FORMAT_CLASSIFIER,
        "recipe": name,
        "config": trained.config,
        "trained_steps": steps,
        "seed": seed,
        "held_out_accuracy": accuracy,
        "command": f"posterior train {name} --classifier-steps {steps} --seed {seed}",
    }
    path = out_dir / f"{name}-noise.safetensors"
    _save_weights(path, trained, meta)
    return path


def train(
    name: str,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    classifier_steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Path]:
    """Train recipe ``name``'s noise-level classifier, then its denoiser (what ``posterior train NAME`` runs).

    ``steps`` / ``classifier_steps`` default to the recipe's; 0 skips that part. Returns the paths written.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    common = dict(seed=seed, resume=resume, progress=progress, device=device)
    classifier_steps = RECIPES[name].classifier_steps if classifier_steps is None else classifier_steps
    paths = {}
    if classifier_steps != 0:
        paths["classifier"] = train_noise_classifier(name, out_dir, steps=classifier_steps, **common)
    if steps != 0:
        paths["prior"] = train_prior(name, out_dir, steps=steps, **common)
    return paths
