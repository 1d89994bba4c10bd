"""Per-request cost of Digest authentication (vivait_sip.registrar.digest) on one core.

Times, in µs per operation (best of several repeats):
  parse sipp      parse_credentials on a SIPp-style value (no qop, no spaces after commas);
  parse baresip   parse_credentials on a qop=auth value with nc/cnonce, like baresip sends;
  challenges      Authenticator.challenges(): a fresh nonce and the two WWW-Authenticate values;
  verify          what AuthGate.check does with an Authorization value: parse_credentials,
                  nonces.validate, then Authenticator.authenticate (qop=auth: check_nc too);
  round trip      challenges + verify: the registrar's digest work for one 401/REGISTER pair.

Usage: .venv/bin/python bench/digest_bench.py [--count 20000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import time
from collections.abc import Callable

from vivait_sip.registrar.digest import (
    Algorithm,
    Authenticator,
    AuthOutcome,
    NonceManager,
    ha1,
    parse_challenge,
    parse_credentials,
)

REALM = "127.0.0.1"
URI = "sip:127.0.0.1:5160"
SOURCE = "127.0.0.1"  # the client address each nonce is bound to
USER = "100000"
HA1 = {alg: ha1(alg, USER, REALM, "secret-100000") for alg in Algorithm}


def _lookup(username: str, realm: str, algorithm: Algorithm) -> str | None:
    return HA1[algorithm] if username == USER and realm == REALM else None


def _authenticator() -> Authenticator:
    nonces = NonceManager(b"bench-secret-0123456789abcdef!!", 300.0, time.time)
    return Authenticator(REALM, nonces, _lookup)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _sipp_value(nonce: str) -> str:
    return (
        f'Digest username="{USER}",realm="{REALM}",uri="{URI}",nonce="{nonce}",'
        f'response="0123456789abcdef0123456789abcdef",algorithm=MD5'
    )


def _baresip_value(auth: Authenticator) -> str:
    """A correct qop=auth MD5 answer to a fresh challenge, laid out as baresip sends it."""
    nonce = parse_challenge(auth.challenges(source=SOURCE)[-1]).nonce
    cnonce, nc = "4c2b1e5d9a0f7e31", "00000001"
    ha2 = _md5(f"REGISTER:{URI}")
    response = _md5(f"{HA1[Algorithm.MD5]}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{USER}",realm="{REALM}",nonce="{nonce}",uri="{URI}",'
        f'response="{response}",algorithm=MD5,cnonce="{cnonce}",qop=auth,nc={nc}'
    )


def _verify_all(auth: Authenticator, values: list[str]) -> None:
    """The server side of one authenticated REGISTER, for each value."""
    for value in values:
        credentials = parse_credentials(value)
        auth.nonces.validate(credentials.nonce, SOURCE)  # AuthGate.check validates first
        outcome = auth.authenticate("REGISTER", credentials, request_uri=URI, source=SOURCE)
        assert outcome is AuthOutcome.OK, outcome


def _report(label: str, seconds: float, count: int) -> float:
    per_op = seconds / count * 1e6
    print(f"{label:<14} {per_op:8.2f} µs/op")
    return per_op


def _best(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def _loop(count: int, op: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        for _ in range(count):
            op()
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one verify pass")
    args = parser.parse_args()
    count, repeat = args.count, args.repeat

    auth = _authenticator()
    sipp, baresip = _sipp_value(auth.nonces.issue(source=SOURCE)), _baresip_value(auth)
    _report("parse sipp", _best(repeat, _loop(count, lambda: parse_credentials(sipp))), count)
    _report("parse baresip", _best(repeat, _loop(count, lambda: parse_credentials(baresip))), count)
    t_challenges = _report("challenges", _best(repeat, _loop(count, lambda: auth.challenges(source=SOURCE))), count)

    def verify() -> float:
        # A fresh table each time, and every value answers its own nonce with nc=1.
        fresh = _authenticator()
        values = [_baresip_value(fresh) for _ in range(count)]
        start = time.perf_counter()
        _verify_all(fresh, values)
        return time.perf_counter() - start

    t_verify = _report("verify", _best(repeat, verify), count)
    print(f"{'round trip':<14} {t_challenges + t_verify:8.2f} µs/op")

    if args.profile:
        fresh = _authenticator()
        values = [_baresip_value(fresh) for _ in range(count)]
        profiler = cProfile.Profile()
        profiler.runcall(_verify_all, fresh, values)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
