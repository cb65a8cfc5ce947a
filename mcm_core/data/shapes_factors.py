"""Factors of the built-in shapes data: constants, sampling, concept labels, priors.

Every image is described by a small dict of CPU tensors (the *factors*). ``M`` is the
number of object slots (``max_objects``); slot ``i`` is drawn on top of slots ``< i``.

==================  ===========  ===============================================
key                 dtype/shape  meaning
==================  ===========  ===============================================
``present``         bool (n, M)  the slot holds an object
``shape``           long (n, M)  index into :data:`SHAPE_NAMES`
``colour``          long (n, M)  index into :data:`COLOUR_NAMES`
``large``           bool (n, M)  large (True) or small object
``cx``, ``cy``      float (n, M) object centre, in units of the image side, in [0, 1]
``fill``            long (n, M)  index into :data:`FILL_NAMES`
``dark``            bool (n,)    dark (True) or light background
``noisy``           bool (n,)    background noise texture on
``noise``           int8 (n, G, G) the texture, in 1/255 grey levels (zero if not noisy)
==================  ===========  ===============================================

Absent slots hold valid but unused values. Positions and sizes are in units of the
image side, so the same factors can be drawn at any resolution.
"""
from __future__ import annotations

import torch

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow")
FILL_NAMES: tuple[str, ...] = ("solid", "hollow", "striped")
FILL_PROBS: tuple[float, ...] = (0.5, 0.25, 0.25)

CONCEPT_NAMES: list[str] = [
    "circle", "square", "triangle", "red", "green", "blue", "large", "left", "top",
    "hollow", "striped", "dark_background", "noisy_background",
]

# Geometry, in units of the image side (so it scales with the resolution).
RADIUS_LARGE = 0.30  # half-extent of a large object (circle radius, half a square side)
RADIUS_SMALL = 0.18
STROKE = 2.0 / 32.0  # outline width: 2 px at 32 px, 14 px at 224 px
STRIPE_PERIOD = 4.0 / 32.0  # one painted and one empty band: 2 px + 2 px at 32 px

# Colours as 0..255 integers, so that every pixel is exactly k / 255 (lossless uint8 cache).
PALETTE_U8: tuple[tuple[int, int, int], ...] = (
    (230, 30, 30),  # red
    (30, 190, 50),  # green
    (40, 90, 245),  # blue
    (245, 215, 25),  # yellow
)
BACKGROUND_U8: tuple[int, int] = (225, 25)  # (light, dark) grey level
# Every colour a pixel takes before the background texture: the objects' palette, then the greys.
PIXEL_COLOURS_U8: tuple[tuple[int, int, int], ...] = (*PALETTE_U8, *((g, g, g) for g in BACKGROUND_U8))
NOISE_GRID = 32  # the texture is a G x G grid of grey offsets, drawn nearest-neighbour
NOISE_AMPLITUDE_U8 = 20  # offsets are uniform integers in [-20, 20] (about 0.08)

P_LARGE = 0.5
P_DARK = 0.5
P_NOISY = 0.2


def _bernoulli(p: float, size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Bool tensor of ``size``, True with probability ``p``, on the generator's device."""
    return torch.rand(size, generator=generator, device=generator.device) < p


def sample_factors(
    n: int, generator: torch.Generator, *, min_objects: int = 1, max_objects: int = 1
) -> dict[str, torch.Tensor]:
    """Draw the factors of ``n`` images (see the module docstring); returned on the CPU.

    The number of objects per image is uniform on ``[min_objects, max_objects]``.
    Present slots come first, large objects before small ones, so a small object is never
    hidden under a large one drawn later.
    """
    m, dev = max_objects, generator.device
    count = torch.randint(min_objects, max_objects + 1, (n, 1), generator=generator, device=dev)
    present = torch.arange(m, device=dev) < count
    shape = torch.randint(0, len(SHAPE_NAMES), (n, m), generator=generator, device=dev)
    colour = torch.randint(0, len(COLOUR_NAMES), (n, m), generator=generator, device=dev)
    large = _bernoulli(P_LARGE, (n, m), generator)
    radius = radius_of(large)
    cx = radius + (1 - 2 * radius) * torch.rand((n, m), generator=generator, device=dev)
    cy = radius + (1 - 2 * radius) * torch.rand((n, m), generator=generator, device=dev)
    probs = torch.tensor(FILL_PROBS, device=dev).expand(n * m, -1)
    fill = torch.multinomial(probs, 1, replacement=True, generator=generator).view(n, m)
    dark = _bernoulli(P_DARK, (n,), generator)
    noisy = _bernoulli(P_NOISY, (n,), generator)
    noise = _sample_noise(noisy, generator)
    slots = dict(present=present, shape=shape, colour=colour, large=large, cx=cx, cy=cy, fill=fill)
    order = torch.argsort((~present).long() * 2 + (~large).long(), dim=1, stable=True)
    slots = {k: v.gather(1, order) for k, v in slots.items()}
    out = dict(slots, dark=dark, noisy=noisy, noise=noise)
    return {k: v.cpu() for k, v in out.items()}


def _sample_noise(noisy: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """int8 ``(n, G, G)`` grey offsets in [-A, A] for the noisy images, zeros elsewhere."""
    n, g, amp = noisy.shape[0], NOISE_GRID, NOISE_AMPLITUDE_U8
    noise = torch.zeros((n, g, g), dtype=torch.int8, device=noisy.device)
    k = int(noisy.sum())
    if k:
        draw = torch.randint(-amp, amp + 1, (k, g, g), generator=generator, device=noisy.device)
        noise[noisy] = draw.to(torch.int8)
    return noise


def radius_of(large: torch.Tensor) -> torch.Tensor:
    """Half-extent, in units of the image side, for a bool ``large`` tensor (same shape)."""
    return torch.where(large, RADIUS_LARGE, RADIUS_SMALL).to(torch.float32)


def concepts_from_factors(factors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float ``(n, K)`` 0/1 labels in :data:`CONCEPT_NAMES` order.

    An object concept is on if ANY present object has it; ``left``/``top`` mean the
    object centre lies in the left/top half (``cx < 0.5`` / ``cy < 0.5``).
    """
    present = factors["present"]
    shape, colour, fill = factors["shape"], factors["colour"], factors["fill"]
    per_object = [shape == 0, shape == 1, shape == 2, colour == 0, colour == 1, colour == 2,
                  factors["large"], factors["cx"] < 0.5, factors["cy"] < 0.5, fill == 1, fill == 2]
    anyof = [(c & present).any(dim=1) for c in per_object]
    columns = anyof + [factors["dark"], factors["noisy"]]
    return torch.stack(columns, dim=1).float()


def _single_object_probs() -> list[float]:
    """Probability that ONE object has each object-level concept (first 11 concepts)."""
    shape, colour = 1 / len(SHAPE_NAMES), 1 / len(COLOUR_NAMES)
    return [shape] * 3 + [colour] * 3 + [P_LARGE, 0.5, 0.5, FILL_PROBS[1], FILL_PROBS[2]]


def concept_frequencies(min_objects: int = 1, max_objects: int = 1) -> torch.Tensor:
    """Exact prior probability of each concept, float ``(K,)`` in :data:`CONCEPT_NAMES` order.

    Objects are independent, so with ``k`` objects an object concept of per-object
    probability ``p`` is on with probability ``1 - (1 - p) ** k``; ``k`` is uniform on
    ``[min_objects, max_objects]``, so the prior is the average over ``k``. ``left`` and
    ``top`` have ``p = 1/2`` because centres are drawn symmetrically about the middle.
    Background concepts do not depend on ``k``: ``P_DARK`` and ``P_NOISY``.
    """
    check_object_counts(min_objects, max_objects)
    p = torch.tensor(_single_object_probs(), dtype=torch.float64)
    ks = torch.arange(min_objects, max_objects + 1, dtype=torch.float64)
    objects = (1 - (1 - p[None, :]) ** ks[:, None]).mean(dim=0)
    background = torch.tensor([P_DARK, P_NOISY], dtype=torch.float64)
    return torch.cat([objects, background]).float()


def check_object_counts(min_objects: int, max_objects: int) -> None:
    """Raise ValueError unless ``1 <= min_objects <= max_objects``."""
    if not (isinstance(min_objects, int) and isinstance(max_objects, int)):
        raise TypeError(f"min_objects and max_objects must be ints, got {min_objects!r} and "
                        f"{max_objects!r}; pass whole numbers such as min_objects=1, max_objects=3")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got min_objects={min_objects}, "
                         f"max_objects={max_objects}; e.g. min_objects=1, max_objects=3")


def select(factors: dict[str, torch.Tensor],
           index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    """The factors of a subset of images (``index`` over the first dimension)."""
    return {k: v[index] for k, v in factors.items()}


# Factor groups a counterfactual can change; each flips one or more concepts of CONCEPT_NAMES.
COUNTERFACTUAL_GROUPS: tuple[str, ...] = ("shape", "colour", "fill", "size", "horizontal", "vertical",
                                          "background", "noise")


def counterfactual_factors(factors: dict[str, torch.Tensor], generator: torch.Generator,
                           groups: tuple[str, ...] = COUNTERFACTUAL_GROUPS) -> dict[str, torch.Tensor]:
    """The same images with one factor group changed per image (all of slot 0's object when it has one).

    Per image one group of ``groups`` is drawn uniformly: ``shape``/``colour``/``fill``: another value,
    uniform over the others; ``size``: the other size (the centre pulled inside the image if needed,
    which keeps it on its side of the middle); ``horizontal``/``vertical``: the centre mirrored about
    the middle (left <-> right, top <-> bottom); ``background``: dark <-> light; ``noise``: the texture
    switched off, or on with a freshly drawn texture. Everything else is kept, so the rendered
    counterfactual differs from the image exactly in the concepts of that group.

    Args:
        factors: CPU factors of n images (module docstring); generator: a CPU generator.
    Returns:
        New CPU factors (the input is not modified).
    """
    unknown = sorted(set(groups) - set(COUNTERFACTUAL_GROUPS))
    if unknown or not groups:
        raise ValueError(f"unknown counterfactual groups {unknown or groups!r}; choose from {list(COUNTERFACTUAL_GROUPS)}")
    n = factors["dark"].shape[0]
    out = {k: v.clone() for k, v in factors.items()}
    pick = torch.tensor([COUNTERFACTUAL_GROUPS.index(g) for g in groups])[
        torch.randint(len(groups), (n,), generator=generator)]
    redraw = {"shape": len(SHAPE_NAMES), "colour": len(COLOUR_NAMES), "fill": len(FILL_NAMES)}
    for key, count in redraw.items():
        rows = pick == COUNTERFACTUAL_GROUPS.index(key)
        shift = torch.randint(1, count, (n,), generator=generator)  # another value, uniform over the others
        out[key][rows, 0] = (factors[key][rows, 0] + shift[rows]) % count
    rows = pick == COUNTERFACTUAL_GROUPS.index("size")
    out["large"][rows, 0] = ~factors["large"][rows, 0]
    r = radius_of(out["large"][:, 0])
    for key in ("cx", "cy"):
        out[key][rows, 0] = torch.minimum(torch.maximum(out[key][rows, 0], r[rows]), 1 - r[rows])
    for key, group in (("cx", "horizontal"), ("cy", "vertical")):
        rows = pick == COUNTERFACTUAL_GROUPS.index(group)
        out[key][rows, 0] = 1 - factors[key][rows, 0]
    rows = pick == COUNTERFACTUAL_GROUPS.index("background")
    out["dark"][rows] = ~factors["dark"][rows]
    rows = pick == COUNTERFACTUAL_GROUPS.index("noise")
    out["noisy"][rows] = ~factors["noisy"][rows]
    fresh = _sample_noise(torch.ones(n, dtype=torch.bool), generator)
    out["noise"] = torch.where(out["noisy"][:, None, None], torch.where(factors["noisy"][:, None, None],
                                                                         factors["noise"], fresh),
                               torch.zeros_like(fresh))
    return out
