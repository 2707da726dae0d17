"""The command line: -t, -V, -h, bad options, bad files."""
import subprocess

from conftest import FORKD, conf_text, free_port


def run(*args):
    return subprocess.run([FORKD, *args], capture_output=True, text=True, timeout=10)


def test_check_good_file(tmp_path):
    conf = tmp_path / "ok.conf"
    conf.write_text(conf_text([{"address": "127.0.0.1", "port": free_port(), "service": "echo"}]))
    r = run("-t", "-c", str(conf))
    assert r.returncode == 0
    assert r.stdout == f"{conf}: configuration OK\n"
    r = run("--test", "--config", str(conf))
    assert r.returncode == 0 and "configuration OK" in r.stdout


def test_check_reports_every_error_with_file_and_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text('workers = 2;\nwrokers = 3;\nthreads = "x";\n'
                    'listeners = ( { address = "127.0.0.1"; port = 5; service = "ecco"; } );\n')
    r = run("-t", "-c", str(conf))
    assert r.returncode == 1
    assert f"{conf}:2: unknown setting 'wrokers' (did you mean 'workers'?)" in r.stderr
    assert f"{conf}:3: 'threads' must be an integer (got a string)" in r.stderr
    assert f"{conf}:4: unknown service 'ecco'" in r.stderr
    assert "configuration OK" not in r.stdout


def test_the_shipped_config_is_valid():
    import os
    path = os.path.join(os.environ.get("FORKD_SRCDIR", "../.."), "etc", "forkd.conf")
    r = run("-t", "-c", path)
    assert r.returncode == 0, r.stderr


def test_version_and_help():
    r = run("-V")
    assert r.returncode == 0 and r.stdout.startswith("forkd ")
    r = run("--help")
    assert r.returncode == 0 and "usage: forkd" in r.stdout and "--config" in r.stdout


def test_unknown_option_is_a_usage_error():
    r = run("--frobnicate")
    assert r.returncode == 2
    assert "unknown option '--frobnicate'" in r.stderr
    r = run("-x")
    assert r.returncode == 2 and "unknown option '-x'" in r.stderr
    r = run("-c")
    assert r.returncode == 2 and "needs a value" in r.stderr
    r = run("extra")
    assert r.returncode == 2 and "unexpected argument 'extra'" in r.stderr


def test_missing_or_unusable_file(tmp_path):
    r = run("-c", str(tmp_path / "nope.conf"))
    assert r.returncode == 1
    assert f"{tmp_path}/nope.conf: cannot open: No such file or directory" in r.stderr
    r = run("-t", "-c", str(tmp_path))
    assert r.returncode == 1 and "is a directory" in r.stderr
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    r = run("-c", str(empty))
    assert r.returncode == 1 and "no 'listeners' defined" in r.stderr
    garbage = tmp_path / "garbage.conf"
    garbage.write_bytes(bytes(range(256)) * 4)
    r = run("-c", str(garbage))
    assert r.returncode == 1 and "NUL byte" in r.stderr
    huge = tmp_path / "huge.conf"
    huge.write_text("# padding\n" * 200000)
    r = run("-c", str(huge))
    assert r.returncode == 1 and "too large" in r.stderr


def test_port_in_use_is_a_clear_startup_error(tmp_path):
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    conf = tmp_path / "busy.conf"
    conf.write_text(conf_text([{"address": "127.0.0.1", "port": port, "service": "echo"}]))
    r = run("-c", str(conf))
    busy.close()
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr
