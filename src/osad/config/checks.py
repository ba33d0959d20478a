"""Range and cross-section checks of a :class:`~osad.config.schema.Config`, each
section's names checked against its owner's registry (datasets, encoders,
attacks, scores)."""

from __future__ import annotations

from osad.attacks.registry import attack_spec, train_attack_names
from osad.attacks.versions import get_version
from osad.checkpoint import check_checkpoint_section
from osad.config.schema import ALL_SCORES, PAIRINGS, AttackConfig, Config, PerfConfig
from osad.data.section import check_data_section
from osad.errors import require, shown, unknown_name
from osad.methods import METHODS
from osad.models.section import check_model_section
from osad.openset import SCORERS, check_scorer_options, make_scorer
from osad.runtime import validate_device


def validate_attack(
    attack: AttackConfig, key: str, num_classes: int | None = None, image_size: int | None = None
) -> None:
    """Range checks of one attack setting by its registered attack; ``key`` names it
    in messages. ``num_classes`` (the known classes the model separates) enables the
    check that the DLR loss has the three classes it needs; ``image_size`` the
    attack's checks against the images' side (e.g. that a patch fits them)."""
    attack_spec(attack.name, f"{key}.name").check(attack, key, num_classes, image_size)


def validate(config: Config) -> None:
    """Check names against the registries and every value against its range."""
    require(
        config.task == "openset",
        f"'task' is '{config.task}'; build it with make_task_config, not make_config",
    )
    if config.method not in METHODS:
        raise unknown_name("method", config.method, METHODS)
    validate_device(config.device)

    info = check_data_section(config.data)
    d = config.data
    denoised = any(n.denoise for n in METHODS[config.method].networks)
    check_model_section(config.model, denoised=denoised)

    t = config.train
    require(t.epochs >= 1, f"'train.epochs' must be >= 1, got {t.epochs}")
    require(t.batch_size >= 1, f"'train.batch_size' must be >= 1, got {t.batch_size}")
    require(t.lr > 0, f"'train.lr' must be > 0, got {t.lr}")
    require(t.weight_decay >= 0, f"'train.weight_decay' must be >= 0, got {t.weight_decay}")
    if t.optimizer not in ("adam", "sgd"):
        raise unknown_name("train.optimizer", t.optimizer, ("adam", "sgd"))
    require(t.reconstruction_weight >= 0, "'train.reconstruction_weight' must be >= 0")
    require(t.rotation_weight >= 0, "'train.rotation_weight' must be >= 0")
    require(t.mutual_weight >= 0, f"'train.mutual_weight' must be >= 0, got {t.mutual_weight}")
    require(
        t.mutual_temperature > 0,
        f"'train.mutual_temperature' must be > 0, got {t.mutual_temperature}",
    )
    require(
        t.grad_accumulation >= 1,
        f"'train.grad_accumulation' must be >= 1, got {t.grad_accumulation}",
    )
    trainable = train_attack_names()
    require(
        attack_spec(t.attack.name, "train.attack.name").can_train,
        f"'train.attack.name' {t.attack.name} is a black-box evaluation attack; training "
        f"needs a gradient attack: {', '.join(trainable)}",
    )
    if info is None:  # an image folder: its classes and size are known once it is read
        num_known, side = len(d.known) or None, d.image_size or None
    else:
        num_known = len(d.known) if d.known else len(info.known_splits[d.split])
        side = d.image_size or info.image_size
    validate_attack(t.attack, "train.attack", num_known, side)
    require(
        t.attack.target == "classifier",
        f"'train.attack.target' must be classifier, got {t.attack.target}: training attacks "
        "the classifier (score and joint targets are evaluation attacks)",
    )

    p = config.perf
    require(
        not p.cuda_graphs or p.compile,
        "'perf.cuda_graphs' works through torch.compile: set perf.compile=true as well",
    )
    if config.device == "cpu":
        check_perf_device(p, config.device)

    check_checkpoint_section(config.checkpoint)

    e = config.eval
    require(e.batch_size >= 1, f"'eval.batch_size' must be >= 1, got {e.batch_size}")
    for name, attack in e.attacks.items():
        require(name != "clean", "'eval.attacks' may not define 'clean': it is always evaluated")
        require(
            name != "ensemble",
            "'eval.attacks' may not define 'ensemble': it is the condition of 'eval.version'",
        )
        validate_attack(attack, f"eval.attacks.{name}", num_known, side)
    require(len(e.scores) >= 1, "'eval.scores' must name at least one score")
    if e.scores != [ALL_SCORES]:
        for name in e.scores:
            if name not in SCORERS:
                raise unknown_name("score in 'eval.scores'", name, (*SCORERS, ALL_SCORES))
    require(
        "reconstruction" not in e.scores or has_decoder(config),
        "score 'reconstruction' in 'eval.scores' needs the OSDN decoder: use method=osdn "
        "or osdn-caml with train.reconstruction=true, or drop the score",
    )
    for name, options in e.score_options.items():
        check_scorer_options(name, options, "eval.score_options")
        if options and not SCORERS[name].needs_model:  # its constructor checks the ranges
            make_scorer(name, **options)
    if e.openmax_fit not in ("attacked", "clean"):
        raise unknown_name("eval.openmax_fit", e.openmax_fit, ("attacked", "clean"))
    require(
        all(0 <= eps <= 255 for eps in e.eps_sweep),
        f"'eval.eps_sweep' values must be in [0, 255] (1/255 units), got {shown(e.eps_sweep)}",
    )
    if e.version is not None:
        get_version(e.version)
    for name in e.pairings:
        if name not in PAIRINGS:
            raise unknown_name("pairing in 'eval.pairings'", name, PAIRINGS)
    require(
        "both" in e.pairings,
        f"'eval.pairings' must include both (the paper's pairing and the headline numbers), "
        f"got {shown(e.pairings)}",
    )


def has_decoder(config: Config) -> bool:
    """Whether the run's model has the OSDN decoder (needed by the reconstruction score)."""
    return METHODS[config.method].decoder and config.train.reconstruction


def score_names(config: Config) -> list[str]:
    """The scores ``eval.scores`` names, with ``all`` expanded to every score the model supports."""
    if config.eval.scores != [ALL_SCORES]:
        return list(config.eval.scores)
    return [name for name in SCORERS if name != "reconstruction" or has_decoder(config)]


def check_perf_device(perf: PerfConfig, device: str) -> None:
    """Refuse the CUDA-only switches on another device (``device`` as resolved)."""
    if device.startswith("cuda"):
        return
    require(
        not perf.bf16,
        f"'perf.bf16' needs a CUDA device, this run uses {device}: bf16 autocast is slower "
        "than fp32 on most CPUs; set perf.bf16=false",
    )
    require(
        not perf.cuda_graphs,
        f"'perf.cuda_graphs' needs a CUDA device, this run uses {device}; "
        "set perf.cuda_graphs=false",
    )
