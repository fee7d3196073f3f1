"""What every CLI test checks the same way: run `skip2lora` in-process, and the one-line error."""
from skip2lora import cli


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err, *fragments):
    """The error line, after checking it is the only line, has the prefix and each fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skip2lora: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]
