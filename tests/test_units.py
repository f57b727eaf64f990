"""cowblock.units: binary size suffixes in, IEC sizes with exact bytes out."""

import pytest

import cowblock
from cowblock.units import format_exact, format_size, parse_size


@pytest.mark.parametrize("text, expected", [
    ("0", 0),
    ("4096", 4096),
    (4096, 4096),
    ("512K", 512 * 1024),
    ("512k", 512 * 1024),
    ("10G", 10 * 2**30),
    ("10g", 10 * 2**30),
    ("10GiB", 10 * 2**30),
    ("4KiB", 4096),
    ("4kib", 4096),
    ("1.5M", 3 * 2**19),
    ("1.5K", 1536),
    (".5K", 512),
    ("2T", 2 * 2**40),
    ("1P", 2**50),
    ("1E", 2**60),
    ("100B", 100),
    (" 64K ", 65536),
    ("64 K", 65536),
])
def test_parse_size_accepts_binary_suffixes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("10GB", "ambiguous"),
    ("1kB", "ambiguous"),
    ("-1", "invalid size"),
    ("abc", "invalid size"),
    ("", "invalid size"),
    ("1X", "invalid size"),
    ("1.2.3K", "invalid size"),
    ("0.1K", "whole number of bytes"),
    ("1.5", "whole number of bytes"),
    (-5, "negative"),
    (True, "int or a string"),
    (None, "int or a string"),
    (1.5, "int or a string"),
])
def test_parse_size_refuses_bad_input_with_a_clear_error(text, fragment):
    with pytest.raises(cowblock.InvalidArgumentError) as info:
        parse_size(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, cowblock.CowblockError)


@pytest.mark.parametrize("n, expected", [
    (0, "0 B"),
    (1, "1 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (1536, "1.5 KiB"),
    (2**20, "1.0 MiB"),
    (2**20 - 1, "1.0 MiB"),          # rounding carries into the next unit
    (2**30, "1.0 GiB"),
    (3 * 2**29, "1.5 GiB"),
    (16 * 2**40, "16.0 TiB"),
    (2**60, "1.0 EiB"),
    (2**70, "1024.0 EiB"),
    (-2048, "-2.0 KiB"),
])
def test_format_size(n, expected):
    assert format_size(n) == expected


def test_format_exact_adds_the_byte_count():
    assert format_exact(2**30) == "1.0 GiB (1073741824 B)"
    assert format_exact(65536) == "64.0 KiB (65536 B)"
    assert format_exact(512) == "512 B"
    assert format_exact(0) == "0 B"


def test_format_refuses_non_integers():
    with pytest.raises(cowblock.InvalidArgumentError):
        format_size(1.5)
    with pytest.raises(cowblock.InvalidArgumentError):
        format_exact("12")


def test_round_trip_of_formatted_whole_units():
    for n in (2**10, 5 * 2**20, 7 * 2**30):
        human = format_size(n)                      # e.g. "5.0 MiB"
        number, unit = human.split()
        assert parse_size(number + unit) == n


@pytest.mark.parametrize("argv", [["--size", "-5G"], ["--block-size", "-64K"]])
def test_bench_takes_a_negative_size_as_a_value_and_refuses_it(argv, capsys):
    from cowblock.benchmark import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert "expected one argument" not in err
    assert repr(argv[1]) in err and "negative" in err
