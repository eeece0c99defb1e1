"""The objectives tfchat trains, one module each, found by name here.

Adding an objective: a new module under `tfchat/objectives/` that defines its
`OBJECTIVE` (see `tfchat.objectives.base.Objective`), and one line in
`REGISTRY` below.
"""

from tfchat import config as config_lib
from tfchat.data import augment
from tfchat.data.dialogues import is_dialogue_data
from tfchat.errors import TfchatError
from tfchat.data.preferences import is_preference_data
from tfchat.data.prepared import is_prepared
from tfchat.objectives import causal, chat, classify, distill, dpo, mlm
from tfchat.objectives.base import INIT_FROM_SETTINGS

REGISTRY = {
    objective.name: objective
    for objective in (causal.OBJECTIVE, chat.OBJECTIVE, mlm.OBJECTIVE, classify.OBJECTIVE,
                      dpo.OBJECTIVE, distill.OBJECTIVE)
}
# `objective: auto` (the default) becomes dpo for preference pairs, chat for
# dialogue data and causal otherwise; a run's saved config holds the
# objective it resolved to.
AUTO = "auto"
AUTO_CHOICES = ("causal", "dpo", "chat")


def get(name):
    """The `Objective` called `name`."""
    if name not in REGISTRY:
        raise TfchatError(
            f"Unknown objective {name!r}; use one of {', '.join((*REGISTRY, AUTO))}."
        )
    return REGISTRY[name]


def resolve(config):
    """`config` with `objective: auto` made concrete and the objective's own
    defaults in the keys nobody set (`Objective.defaults`), after checking
    that the objective can use the config's settings (`check`)."""
    if config.objective == AUTO:
        config = config_lib.replace(config, objective=_auto_objective(config))
    if config.objective in REGISTRY:
        config = config_lib.with_defaults(config, REGISTRY[config.objective].defaults(config))
    check(config)
    return config


def _auto_objective(config):
    """The objective `objective: auto` becomes for `config`'s data."""
    return ("causal" if is_prepared(config.data.path)
            else "dpo" if is_preference_data(config.data)
            else "chat" if is_dialogue_data(config.data) else "causal")


def settings_from(config):
    """(config key naming a run, the sections of its config taken) for each
    run whose settings `config`'s objective takes where they were left
    unset (`Objective.settings_from`). For `auto`, those of the objectives
    it may become when they agree (the data is then not read yet), else of
    the one the data makes it; an unknown objective (an error soon after)
    is read as one that starts from init_from."""
    if config.objective == AUTO:
        choices = {REGISTRY[name].settings_from for name in AUTO_CHOICES}
        if len(choices) == 1:
            return choices.pop()
        return REGISTRY[_auto_objective(config)].settings_from
    objective = REGISTRY.get(config.objective)
    return objective.settings_from if objective else INIT_FROM_SETTINGS


def defaults_used(config):
    """The objective's own defaults that `config` took, {dotted key: value}
    (for the line training starts with)."""
    given = config_lib.given_keys(config)
    if given is None:
        return {}
    return {key: value for key, value in get(config.objective).defaults(config).items()
            if key not in given}


def check(config):
    """Raises `TfchatError` naming every setting of `config` that its
    objective cannot use (the rest of the config was checked when built)."""
    config_lib.validate(config)
    settings = [problem for o in REGISTRY.values() for problem in o.check_settings(config)]
    if settings:
        raise TfchatError(settings[0] + ".")
    objective = get(config.objective)
    problems = objective.check_config(config)
    if is_prepared(config.data.path) and not objective.reads_prepared:
        readers = " and ".join(name for name, o in REGISTRY.items() if o.reads_prepared)
        problems.append(f"data.path {config.data.path} holds prepared tokens (python -m "
                        f"tfchat.prepare), which objectives {readers} read, not "
                        f"{objective.name}")
    if augment.from_config(config.data).on and not objective.augments:
        users = ", ".join(name for name, o in REGISTRY.items() if o.augments)
        problems.append(f"data.augment_mask, data.augment_delete and data.augment_swap "
                        f"perturb the text of objectives {users}, not {objective.name}")
    if config.data.format == "csv" and not objective.labelled:
        problems.append(f"data.format csv is for labelled data (objective classify), "
                        f"not objective {objective.name}")
    if problems:
        raise TfchatError(problems[0] + ".")
