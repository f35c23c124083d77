"""``DataSource``: field checks (one line naming the field) and its command-line options."""

import argparse

import pytest

from vitcompress.data.source import DataSource, default_workers
from vitcompress.errors import ConfigError
from vitcompress.options import add_options, from_args


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": "imagenet"}, "data must be 'fashion-mnist' or 'imagefolder:DIR', got 'imagenet'"),
        ({"data": "imagefolder:"}, "data must be 'fashion-mnist' or 'imagefolder:DIR'"),
        ({"calib_data": ""}, "calib_data must be a folder"),
        ({"input_size": (224, 224, 3)}, "input_size takes one value (square) or two (height width)"),
        ({"input_size": (0,)}, "input_size must be an integer >= 1, got 0"),
        ({"mean": ()}, "mean takes one value or one per channel, got none"),
        ({"mean": (0.5, float("nan"))}, "mean must be a finite number"),
        ({"std": (0.5, 0.0, 0.5)}, "std must be a finite number > 0, got 0.0"),
        ({"crop_pct": 0.0}, "crop_pct must be a finite number > 0 and <= 1, got 0.0"),
        ({"crop_pct": 1.2}, "crop_pct must be a finite number > 0 and <= 1"),
        ({"interpolation": "cubic"}, "interpolation must be one of ['bilinear', 'bicubic', 'nearest'"),
        ({"workers": -1}, "workers must be an integer >= 0, got -1"),
    ],
)
def test_bad_fields_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as e:
        DataSource(**kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_scalars_become_tuples_and_defaults():
    source = DataSource(input_size=64, mean=0.5, std=0.25)
    assert (source.input_size, source.mean, source.std) == ((64,), (0.5,), (0.25,))
    assert DataSource().workers == default_workers() and 1 <= default_workers() <= 4
    assert DataSource(data="imagefolder:/x").root.as_posix() == "/x" and DataSource().root is None


def test_command_line_options():
    parser = argparse.ArgumentParser()
    add_options(parser, DataSource)
    line = "--data imagefolder:/d --eval-data /e --input-size 64 48 --mean 0.5 0.4 0.3 --std 0.2 --crop-pct 1"
    args = parser.parse_args([*line.split(), "--interpolation", "bilinear", "--workers", "0"])
    assert from_args(DataSource, args) == DataSource(
        data="imagefolder:/d",
        eval_data="/e",
        input_size=(64, 48),
        mean=(0.5, 0.4, 0.3),
        std=(0.2,),
        crop_pct=1.0,
        interpolation="bilinear",
        workers=0,
    )
    assert from_args(DataSource, parser.parse_args([])) == DataSource()
    text = parser.format_help()
    for flag in ("--data", "--calib-data", "--eval-data", "--input-size N [N ...]", "--mean M [M ...]", "--workers"):
        assert flag in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--interpolation", "cubic"])
