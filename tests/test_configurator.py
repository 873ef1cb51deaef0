"""The config system: typos and type errors are caught and explained, never silently accepted."""
import shlex
import subprocess
import sys
import dataclasses
from dataclasses import dataclass

import pytest

from configurator import ConfigError, help_text, key, parse_config


@dataclass
class Cfg:
    out_dir: str = key("out", "where")
    dtype: str = key("auto", "precision", choices=("auto", "float32", "bfloat16"))
    batch_size: int = key(8, "sequences")
    learning_rate: float = key(6e-4, "lr")
    compile: bool | None = key(None, "compile")
    decay_lr: bool = key(True, "decay")


def test_defaults_file_and_cli_apply_in_order(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("import math\nbatch_size = 16\nlearning_rate = 1  # int is promoted\n_private = 3\n")
    cfg = parse_config(Cfg, [str(f), "--batch_size=4"])
    assert (cfg.batch_size, cfg.learning_rate, cfg.out_dir) == (4, 1.0, "out")
    assert isinstance(cfg.learning_rate, float)


def test_values_parse_bools_none_and_keep_equals_signs():
    cfg = parse_config(Cfg, ["--compile=False", "--decay_lr=true", "--out_dir=runs/a=b", "--learning_rate=3e-4"])
    assert cfg.compile is False and cfg.decay_lr is True and cfg.out_dir == "runs/a=b" and cfg.learning_rate == 3e-4
    assert parse_config(Cfg, ["--compile=None"]).compile is None
    assert parse_config(Cfg, ["--batch_size=5e3"]).batch_size == 5000  # integral floats are fine for ints


def test_unknown_key_on_cli_names_the_closest():
    with pytest.raises(ConfigError, match="unknown config key 'bach_size' on the command line; did you mean 'batch_size'"):
        parse_config(Cfg, ["--bach_size=4"])


def test_unknown_key_in_file_names_file_and_closest(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("learning_rat = 1e-3\n")
    with pytest.raises(ConfigError, match=r"'learning_rat' in config file .*c\.py; did you mean 'learning_rate'"):
        parse_config(Cfg, [str(f)])


@pytest.mark.parametrize("arg, expected", [
    ("--batch_size=abc", "'batch_size' expects int, got 'abc'"),
    ("--batch_size=2.5", "'batch_size' expects int, got float 2.5"),
    ("--decay_lr=1", "'decay_lr' expects bool, got int 1"),
    ("--learning_rate=True", "'learning_rate' expects float, got bool True"),
])
def test_type_mismatch_says_what_was_expected(arg, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config(Cfg, [arg])


def test_type_mismatch_in_file(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("batch_size = '8'\n")
    with pytest.raises(ConfigError, match="'batch_size' expects int, got str '8'"):
        parse_config(Cfg, [str(f)])


def test_space_separated_value_gets_a_hint():
    with pytest.raises(ConfigError, match="write --batch_size=4 \\(with '='\\)"):
        parse_config(Cfg, ["--batch_size", "4"])


def test_a_bare_flag_sets_a_bool_key_to_true_wherever_it_stands():
    assert parse_config(Cfg, ["--decay_lr"]).decay_lr is True
    cfg = parse_config(Cfg, ["--compile", "--batch_size=4"])  # a flag before another flag
    assert cfg.compile is True and cfg.batch_size == 4
    assert parse_config(Cfg, ["--batch_size=4", "--compile"]).compile is True


def suggested_fix(message: str) -> list[str]:
    """The arguments a message tells the user to write: the shell words after 'write ' up to ' ('."""
    return shlex.split(message.split("write ", 1)[1].split(" (", 1)[0])


@pytest.mark.parametrize("argv, fix", [
    (["--batch_size", "4"], ["--batch_size=4"]),                            # a space instead of '='
    (["--out_dir", "my runs/a"], ["--out_dir=my runs/a"]),                  # a value the shell must quote
    (["--batch_size", "--compile=False"], ["--batch_size=8"]),              # bare before another flag: not glued to it
    (["--learning_rate"], ["--learning_rate=0.0006"]),                      # ... or at the end
    (["--compile", "False"], ["--compile=False"]),                          # a bool key with a space before its value
])
def test_the_printed_fix_pasted_back_parses(argv, fix):
    with pytest.raises(ConfigError) as e:
        parse_config(Cfg, argv)
    assert suggested_fix(str(e.value)) == fix  # what the shell hands over when the printed text is pasted
    parse_config(Cfg, fix)


@pytest.mark.slow
def test_train_help_lists_every_key_with_type_default_and_meaning():
    import train
    out = subprocess.run([sys.executable, train.__file__, "--help"], capture_output=True, text=True, check=True).stdout
    for line in ("--batch_size=12  (int or str)", "--learning_rate=0.0006  (float)", "--compile=None  (bool or None)",
                 "--init_from='scratch'  (str)  'scratch', 'resume'"):
        assert line in out
    assert "or 'auto': the largest that fits" in out and "[>= 1 or auto]" in out
    assert out.count("\n  --") == len(train.TrainConfig.__dataclass_fields__)


@pytest.mark.slow
def test_train_cli_error_is_a_message_not_a_traceback():
    import train
    r = subprocess.run([sys.executable, train.__file__, "--max_iter=10"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "did you mean 'max_iters'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("source, expected", [
    ("batch_size = 8\nlearning_rate = 1e-3 +\n", r"c\.py:2: invalid Python in the config file"),
    ("batch_size = 8\nlearning_rate = lr_base * 2\n", r"c\.py:2: running the config file raised NameError: name 'lr_base'"),
])
def test_broken_config_file_points_at_its_line(tmp_path, source, expected):
    f = tmp_path / "c.py"
    f.write_text(source)
    with pytest.raises(ConfigError, match=expected):
        parse_config(Cfg, [str(f)])


def test_a_value_outside_the_declared_choices_lists_them(tmp_path):
    with pytest.raises(ConfigError, match="'dtype' must be one of 'auto', 'float32', 'bfloat16', got 'bfloat-16'; "
                                          "did you mean 'bfloat16'"):
        parse_config(Cfg, ["--dtype=bfloat-16"])
    f = tmp_path / "c.py"
    f.write_text("dtype = 'fp8'\n")
    with pytest.raises(ConfigError, match="'dtype' must be one of .*, got 'fp8'$"):
        parse_config(Cfg, [str(f)])
    assert parse_config(Cfg, ["--dtype=float32"]).dtype == "float32"



@dataclass
class AutoCfg:
    batch_size: int | str = key(8, "sequences, or 'auto'", range="[1, inf)", choices=("auto",))


def test_an_int_key_that_also_takes_a_word(tmp_path):
    assert parse_config(AutoCfg, ["--batch_size=auto"]).batch_size == "auto"
    assert parse_config(AutoCfg, ["--batch_size=16"]).batch_size == 16
    f = tmp_path / "c.py"
    f.write_text("batch_size = 'auto'\n")
    assert parse_config(AutoCfg, [str(f)]).batch_size == "auto"
    for arg, expected in [("--batch_size=autp", "'batch_size' must be >= 1 or 'auto', got 'autp'; did you mean 'auto'"),
                          ("--batch_size=0", "'batch_size' must be >= 1, got 0"),
                          ("--batch_size=2.5", "'batch_size' expects int or str, got float 2.5")]:
        with pytest.raises(ConfigError, match=expected):
            parse_config(AutoCfg, [arg])
    assert "--batch_size=8  (int or str)  sequences, or 'auto' [>= 1 or auto]" in help_text(AutoCfg, "t")


def test_train_takes_each_model_key_from_gpt_config():
    # one source: default, meaning and allowed values are GPTConfig's, so train.py cannot drift from model.py
    import train
    from model import GPTConfig
    train_keys = {f.name: f for f in dataclasses.fields(train.TrainConfig)}
    for f in dataclasses.fields(GPTConfig):
        assert f.metadata["help"], f.name
        assert (train_keys[f.name].default, train_keys[f.name].metadata) == (f.default, f.metadata), f.name
    with pytest.raises(ConfigError, match="'n_head' must be >= 1, got 0"):
        parse_config(train.TrainConfig, ["--n_head=0"])
    with pytest.raises(ValueError, match="n_head must be in \\[1, inf\\), got 0"):
        GPTConfig(n_head=0)
