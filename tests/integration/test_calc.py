"""The calc service, as a user at telnet sees it: one request per line, one
exact answer (or one exact error line) per request."""
import pytest

MAX = 9223372036854775807          # INT64_MAX
MIN = -9223372036854775808         # INT64_MIN

UNKNOWN = "(use add, sub, mul, div, square or a number)"
MISSING_OP = "ERR missing operation (try: add 7 4; a lone number is squared)"
EMPTY = "ERR empty request (try: add 7 4)"
# every error says what is accepted, too
OVERFLOW = f"ERR overflow (integers must stay within {MIN}..{MAX})"
DEC_OVERFLOW = "ERR overflow (decimals must stay within about -1.8e308..1.8e308)"
DIV_ZERO = "ERR division by zero (the divisor must not be 0)"


def nan(tok):
    return f"ERR not a number: '{tok}' (expected e.g. 7, -3 or 2.5)"


def needs(op, n):
    example = "67" if n == 1 else "7 4"
    return f"ERR {op} needs {n} number{'s' if n > 1 else ''} (e.g. {op} {example})"


@pytest.fixture
def calc(forkd_factory):
    d = forkd_factory([{"service": "calc"}], workers=1, threads=2)
    return d.client("calc")


def check(client, cases):
    """Ask every request; report all wrong answers at once."""
    wrong = []
    for req, want in cases:
        got = client.ask(req)
        if got != want:
            wrong.append(f"{req!r}: got {got!r}, expected {want!r}")
    assert wrong == [], "\n".join(wrong)


def test_comma_and_space_forms(calc):
    check(calc, [
        ("add,7,4", "11"),
        ("add 7 4", "11"),
        ("add, 7, 4", "11"),
        ("add , 7 , 4", "11"),
        ("add\t7\t4", "11"),
        ("   add    7     4   ", "11"),
        ("sub,7,4", "3"),
        ("sub 4 7", "-3"),
        ("mul 7 4", "28"),
        ("mul,-7,4", "-28"),
        ("div 8 4", "2"),
        ("div -8 4", "-2"),
        ("div 0 5", "0"),
        ("add +7 -4", "3"),
    ])


def test_crlf_and_lf_requests_both_work(calc):
    calc.send("add 1 2\r\nmul 3 4\nsub 9 1\r\n")
    assert calc.line() == "3"
    assert calc.line() == "12"
    assert calc.line() == "8"


def test_operation_names_in_any_case(calc):
    check(calc, [
        ("ADD 7 4", "11"), ("Add 7 4", "11"), ("aDd,7,4", "11"),
        ("SUB 7 4", "3"), ("Sub 7 4", "3"),
        ("MUL 7 4", "28"), ("mUl 7 4", "28"),
        ("DIV 8 2", "4"), ("Div 8 2", "4"),
        ("SQUARE 67", "4489"), ("Square 67", "4489"),
    ])


def test_square_and_bare_number(calc):
    check(calc, [
        ("square 67", "4489"),
        ("67", "4489"),
        ("  67  ", "4489"),
        ("-67", "4489"),
        ("square,-3", "9"),
        ("0", "0"),
        ("1.5", "2.25"),
        (".5", "0.25"),
    ])


def test_exact_64_bit_edges(calc):
    check(calc, [
        (f"add {MAX - 1} 1", str(MAX)),
        (f"add {MAX} 0", str(MAX)),
        (f"add {MIN} 0", str(MIN)),
        (f"sub {MIN + 1} 1", str(MIN)),
        (f"sub 0 {MAX}", str(-MAX)),
        # would lose its last digits if done in double
        ("add 4611686018427387904 4611686018427387903", str(MAX)),
        (f"sub {MAX} 1", "9223372036854775806"),
        ("mul -4611686018427387904 2", str(MIN)),
        ("mul 3037000499 3037000499", "9223372030926249001"),
        ("square 3037000499", "9223372030926249001"),
        ("-3037000499", "9223372030926249001"),
        (f"div {MIN} 1", str(MIN)),
        (f"div {MAX} -1", str(-MAX)),
        (f"div {MIN} 2", "-4611686018427387904"),
        (f"square {MIN}", OVERFLOW),
        # 256 characters is still a number
        ("add " + "0" * 255 + "1 1", "2"),
    ])


def test_overflow_is_refused_never_wrapped(calc):
    check(calc, [
        (f"add {MAX} 1", OVERFLOW),
        (f"add 1 {MAX}", OVERFLOW),
        (f"add {MIN} -1", OVERFLOW),
        (f"sub {MIN} 1", OVERFLOW),
        (f"sub 0 {MIN}", OVERFLOW),
        ("mul 4294967296 4294967296", OVERFLOW),
        ("mul 4611686018427387904 2", OVERFLOW),
        (f"mul {MIN} -1", OVERFLOW),
        ("square 3037000500", OVERFLOW),
        ("3037000500", OVERFLOW),
        # literals that do not fit are refused, not clamped
        ("add 9223372036854775808 0", OVERFLOW),
        ("add -9223372036854775809 0", OVERFLOW),
        ("9223372036854775808", OVERFLOW),
        (f"div {MIN} -1", OVERFLOW),
        # decimals overflow too, instead of printing inf
        ("1e999", DEC_OVERFLOW),
        ("add 1e999 1", DEC_OVERFLOW),
        ("mul 1e200 1e200", DEC_OVERFLOW),
        ("square 1e200", DEC_OVERFLOW),
    ])


def test_decimals(calc):
    check(calc, [
        ("div 7 2", "3.5"),
        ("div -7 2", "-3.5"),
        ("div 1 3", "0.333333333333333"),
        ("div 2 3", "0.666666666666667"),
        ("add 1.5 2.25", "3.75"),
        ("add 0.1 0.2", "0.3"),
        ("sub 0.1 0.3", "-0.2"),
        ("mul 2.5 4", "10"),
        ("div 1.0 4", "0.25"),
        ("add 1e2 1", "101"),
        ("sub 1.5 1.5", "0"),
        ("mul -0.0 1", "0"),
        ("square 1.5", "2.25"),
        (f"div {MAX} 2", "4.61168601842739e+18"),
    ])


def test_errors_have_exact_lines(calc):
    check(calc, [
        ("div 1 0", DIV_ZERO),
        ("div 1.5 0", DIV_ZERO),
        ("div 1 0.0", DIV_ZERO),
        ("pow 2 3", f"ERR unknown operation 'pow' {UNKNOWN}"),
        ("hello", f"ERR unknown operation 'hello' {UNKNOWN}"),
        ("x" * 40 + " 1 2", f"ERR unknown operation '{'x' * 32}...' {UNKNOWN}"),
        ("add 7", needs("add", 2)),
        ("add", needs("add", 2)),
        ("add 1 2 3", needs("add", 2)),
        ("sub 1", needs("sub", 2)),
        ("mul 1 2 3 4 5", needs("mul", 2)),
        ("div 5", needs("div", 2)),
        ("square", needs("square", 1)),
        ("square 2 3", needs("square", 1)),
        ("7 4", MISSING_OP),
        ("add one 2", nan("one")),
        ("add 2 two", nan("two")),
        ("add,,2", nan("")),
        ("add 0x10 1", nan("0x10")),
        ("add --7 1", nan("--7")),
        ("add 1e 1", nan("1e")),
        ("nan", nan("nan")),
        ("NaN", nan("NaN")),
        ("inf", nan("inf")),
        ("-inf", nan("-inf")),
        ("add nan 1", nan("nan")),
        ("add 1 inf", nan("inf")),
        ("1x", nan("1x")),
        ("add " + "1" * 257 + " 1",
         f"ERR number too long: '{'1' * 32}...' (at most 256 characters)"),
        ("", EMPTY),
        ("   ", EMPTY),
        ("\t", EMPTY),
    ])


def test_unprintable_bytes_are_not_echoed_back(calc):
    calc.send(b"add \x01\x1b[2J 1\n")
    assert calc.line() == nan("??[2J")
    calc.send(b"\xff\xfe 1 2\n")
    assert calc.line() == f"ERR unknown operation '??' {UNKNOWN}"
    # the session is still good afterwards
    assert calc.ask("add 7 4") == "11"


def test_one_reply_per_request_when_pipelined(calc):
    reqs = [f"add {i} {i}" for i in range(200)]
    calc.send("".join(r + "\n" for r in reqs))
    for i in range(200):
        assert calc.line() == str(2 * i)
