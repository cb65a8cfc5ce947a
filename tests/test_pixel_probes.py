"""benchmarks/pixel_probes.py: the noise texture is invisible to a linear read-out of the pixels, colour is not."""
from __future__ import annotations

import pytest


def test_noise_needs_a_nonlinearity_and_colour_does_not(capsys, benchmark_script):
    script = benchmark_script("pixel_probes")
    aucs = script.main(["--train", "400", "--test", "200"])
    assert aucs["raw pixels"]["noisy_background"] < 0.7  # zero-mean texture: averaged away by any linear map
    assert aucs["|horizontal pixel difference|"]["noisy_background"] > 0.95
    assert aucs["raw pixels"]["red"] > 0.95 and aucs["raw pixels"]["dark_background"] > 0.95
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| concept | raw pixels") and len(table) == 2 + len(aucs["raw pixels"])
    with pytest.raises(SystemExit):
        script.main(["--train", "10"])
