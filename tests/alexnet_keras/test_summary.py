import subprocess
import sys

import pytest

from alexnet_keras import summary


def test_summary_prints_layers_and_total(capsys):
    summary.main(["--variant", "d2l", "--input-shape", "224,224,1", "--num-classes", "10"])
    out = capsys.readouterr().out
    assert "conv1 (Conv2D)" in out
    assert "(None, 54, 54, 96)" in out
    assert "(None, 5, 5, 256)" in out
    assert "Total params: 46,764,746" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--input-shape", "227x227"], "expected HEIGHT,WIDTH,CHANNELS"),
        (["--input-shape", "60,60,3"], "at least 67x67"),
        (["--variant", "vgg"], "invalid choice: 'vgg'"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message):
    result = subprocess.run(
        [sys.executable, "-m", "alexnet_keras.summary", *argv], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
