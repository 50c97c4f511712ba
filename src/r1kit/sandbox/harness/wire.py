"""Plain data across the sandbox's process boundary: frames, JSON without the `json` package, and the codec.

Part of the shipped harness (see r1kit.sandbox.harness): it imports built-in modules only.

`encode` turns plain data into a JSON-able tree; a subclass of a plain type crosses as its base type (Counter,
OrderedDict, defaultdict -> dict; a namedtuple -> tuple; an IntEnum -> int; deque -> list; bytearray -> bytes), so
honest answers pass, and the receiver never sees the subclass (an `int` whose `__eq__` always says True arrives as
a plain int). Ints beyond +-2**63 cross in hexadecimal: of any size, in linear time both ways (decimal
str <-> int is quadratic, which is why Python caps it at 4,300 digits).

`decode` is what the judge runs on the program's messages, so it is bounded: a message is at most MAX_MESSAGE
bytes (checked before parsing), nests at most MAX_DEPTH deep, holds at most MAX_VALUES values, and a set or dict
whose keys share one hash more than MAX_SAME_HASH times is refused (ints, floats and tuples hash
deterministically, so a program could send 60,000 ints of one hash and make building the set quadratic; strings
and bytes hash with the judge's secret seed). The result holds builtin values only.
"""

import _collections
import binascii
import os
import struct

MAX_MESSAGE = 2 << 20  # bytes of one message (a call's arguments or a function's answer, as JSON)
MAX_VALUES = 200_000  # values in one decoded message: every item, key and value counts
MAX_DEPTH = 100  # nesting of one decoded value
MAX_SAME_HASH = 8  # keys of one set or dict sharing a hash (honest data: -1 and -2 share one, rarely more)
BIG_INT = 1 << 63  # ints at least this large (either sign) cross as hexadecimal
FRAME = struct.Struct(">I")
_json = None  # set by start_json: JSON through the C accelerator alone (the `json` package imports `re`: ~7 ms)


def read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd):
    (n,) = FRAME.unpack(read_exact(fd, 4))
    return read_exact(fd, n)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Json:
    """json.dumps / json.loads by `_json`'s C encoder and scanner, configured as json's defaults are (NaN and
    infinities allowed), without importing `json` (an error message imports it, on the error path only)."""

    def __init__(self):
        import _json

        class Context:  # the attributes _json.make_scanner reads from a json.JSONDecoder
            strict, object_hook, object_pairs_hook = True, None, None
            parse_float, parse_int = float, int
            parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
            memo = {}

        def refuse(o):
            raise TypeError(f"{type(o).__name__} is not JSON")

        self.scan = _json.make_scanner(Context())
        self.encode = _json.make_encoder(None, refuse, _json.encode_basestring_ascii, None, ":", ",", False, False,
                                         True)

    def dumps(self, obj):
        return "".join(self.encode(obj, 0))

    def loads(self, data):
        text = data.decode() if isinstance(data, bytes) else data
        try:
            obj, end = self.scan(text, 0)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(text):
            raise ValueError("extra data after the JSON value")
        return obj


def start_json():
    global _json
    _json = Json()


def dumps(obj):
    return _json.dumps(obj).encode()


def loads(data, bounded=True):
    """JSON of a message; bounded (the judge reading the program): at most MAX_MESSAGE bytes."""
    if bounded and len(data) > MAX_MESSAGE:
        raise ValueError(f"a message over {MAX_MESSAGE >> 20} MB")
    return _json.loads(data)


def send_message(fd, obj):
    data = dumps(obj)
    write_all(fd, FRAME.pack(len(data)) + data)


def encode(value, depth=0):
    """A JSON-able tree of plain data: None, bool, int, float, str, bytes, complex, list, tuple, dict, set,
    frozenset, and their subclasses as the base type (see the module's docstring); anything else is a TypeError."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        value = int.__int__(value)
        return value if -BIG_INT < value < BIG_INT else {"i": format(value, "x")}
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (list, _collections.deque)):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"t": [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        return {"f" if isinstance(value, frozenset) else "s": [encode(v, depth + 1) for v in value]}
    if isinstance(value, (bytes, bytearray)):
        return {"b": binascii.b2a_base64(bytes(value), newline=False).decode()}
    if isinstance(value, complex):
        return {"c": [float(value.real), float(value.imag)]}
    raise TypeError(f"cannot pass a {type(value).__name__} between the tests and the program (plain data only)")


def decode(tree, bounded=True):
    """Builtin values from a JSON tree made by `encode` (or by anyone: anything else raises ValueError); bounded
    (the judge reading the program): within MAX_VALUES values, sets and dicts free of hash floods."""
    return _decode(tree, 0, [MAX_VALUES] if bounded else None)


def _decode(tree, depth, budget):
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(f"a value of more than {MAX_VALUES} parts")
    if depth > MAX_DEPTH:
        raise ValueError(f"a value nested over {MAX_DEPTH} deep")
    t = type(tree)
    if tree is None or t in (bool, int, float, str):
        return tree
    if t is list:
        return [_decode(v, depth + 1, budget) for v in tree]
    if t is dict and len(tree) == 1:
        ((tag, body),) = tree.items()
        if type(body) is str:
            if tag == "b":
                return binascii.a2b_base64(body)
            if tag == "i":
                return int(body, 16)
        if type(body) is list:
            if tag == "t":
                return tuple(_decode(v, depth + 1, budget) for v in body)
            if tag == "d":
                if not all(type(kv) is list and len(kv) == 2 for kv in body):
                    raise ValueError("bad dict")
                keys = [_decode(kv[0], depth + 1, budget) for kv in body]
                values = [_decode(kv[1], depth + 1, budget) for kv in body]
                if budget is not None:
                    _check_hashes(keys)
                return dict(zip(keys, values))
            if tag in ("s", "f"):
                items = [_decode(v, depth + 1, budget) for v in body]
                if budget is not None:
                    _check_hashes(items)
                return (set if tag == "s" else frozenset)(items)
            if tag == "c" and len(body) == 2 and all(type(x) in (int, float) for x in body):
                return complex(body[0], body[1])
    raise ValueError("not a value made by encode()")


def _check_hashes(keys):
    """Refuse keys that share one hash more than MAX_SAME_HASH times: linear (distinct hashes are distinct ints,
    whose own hashes do not collide), so a set or dict is then built in linear time."""
    seen = {}
    try:
        for key in keys:
            h = hash(key)
            n = seen.get(h, 0) + 1
            if n > MAX_SAME_HASH:
                raise ValueError(f"more than {MAX_SAME_HASH} keys of one set or dict share a hash (refused)")
            seen[h] = n
    except TypeError:
        raise ValueError("an unhashable key") from None
