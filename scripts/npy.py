"""Little-endian float32 .npy files (version 1, C order) with the standard
library only, for the scripts beside this one."""
import array


def write_npy(path, shape, values):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % "".join(f"{d}, " for d in shape)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
        f.write(array.array("f", values).tobytes())


def read_floats(path):
    """The data of a file `write_npy` (or resnetc) wrote, flat."""
    raw = open(path, "rb").read()
    out = array.array("f")
    out.frombytes(raw[10 + int.from_bytes(raw[8:10], "little"):])
    return out
