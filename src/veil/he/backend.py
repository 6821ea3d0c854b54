"""The homomorphic-encryption backend: a small interface, and TenSEAL (SEAL) behind it.

Two sides, two objects. The client holds a :class:`ClientKeys`: the secret key, from which it
encrypts, decrypts and exports a *public bundle* (the parameters and the evaluation keys a
circuit needs: relinearisation keys for ciphertext products, Galois keys for the rotations it
uses, nothing else). The server builds an :class:`Evaluator` from its own parameters and the
bundle; an evaluator has no secret key and no way to decrypt. The circuits in
:mod:`veil.he.circuits` are written against :class:`Evaluator` only, so a second library
(OpenFHE) can be added as another backend.

:class:`TenSealBackend` uses SEAL through TenSEAL's bundled bindings (``tenseal.sealapi``) rather
than TenSEAL's vector layer, because the scoring service needs what that layer hides: Galois keys
for the few rotations a circuit uses (TenSEAL generates all of them: 34 MiB at N = 8192 with two
levels), seeded symmetric ciphertexts and keys (half the upload), and control of every rescale
and of the encoding scale, so that no slot but the result survives (see :mod:`veil.he.circuits`).
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import itertools
import json
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError, DataError, MissingDependencyError
from veil.he.params import CkksParameters, check_security

__all__ = ["ClientKeys", "Evaluator", "HEBackend", "TenSealBackend", "default_backend"]

Ciphertext = Any  # the backend's own ciphertext object, opaque to the circuits
Values = float | complex | npt.NDArray[np.float64] | npt.NDArray[np.complex128]
"""Constants for the slots: one for every slot, or one per slot (complex sets imaginary parts)."""

_MAGIC = b"VEILHE1\n"
_PUBLIC_SECTIONS = ("relin_keys", "galois_keys")


class ClientKeys(abc.ABC):
    """The client's keys: encrypt, decrypt, and export the public bundle."""

    params: CkksParameters
    rotations: tuple[int, ...]
    relinearization: bool
    conjugation: bool

    @abc.abstractmethod
    def encrypt(self, values: npt.ArrayLike) -> bytes:
        """Encrypt ``values`` into slots ``0 .. len(values) - 1`` (the rest hold zero); complex
        values set the slots' imaginary parts too."""

    @abc.abstractmethod
    def decrypt(self, ciphertext: bytes) -> npt.NDArray[np.float64]:
        """The real part of every slot of a ciphertext."""

    @abc.abstractmethod
    def decrypt_complex(self, ciphertext: bytes) -> npt.NDArray[np.complex128]:
        """Every slot of a ciphertext, real and imaginary parts."""

    @abc.abstractmethod
    def public_bundle(self) -> bytes:
        """The parameters and evaluation keys a server needs. Never the secret key."""

    @abc.abstractmethod
    def save_secret(self) -> bytes:
        """Everything :meth:`HEBackend.load_client` needs, secret key included: keep it private."""


class Evaluator(abc.ABC):
    """Arithmetic on ciphertexts with public material only."""

    params: CkksParameters

    @abc.abstractmethod
    def load(self, data: bytes) -> Ciphertext:
        """A fresh ciphertext from a client; malformed or foreign data raises :class:`DataError`."""

    @abc.abstractmethod
    def dump(self, ct: Ciphertext) -> bytes: ...

    @abc.abstractmethod
    def multiply_plain(
        self, ct: Ciphertext, values: Values, *, target_scale: float, fresh: bool = False
    ) -> Ciphertext:
        """``ct * values`` slot by slot, rescaled once, at ``target_scale``. ``fresh``: values
        used once (per-query randomness), not kept in the evaluator's cache of model constants."""

    @abc.abstractmethod
    def multiply_plain_no_rescale(
        self,
        ct: Ciphertext,
        values: Values,
        *,
        plain_scale: float | None = None,
        fresh: bool = False,
    ) -> Ciphertext:
        """``ct * values`` left at the larger scale (sum or rotate, then :meth:`rescale`). The
        constants are encoded at ``plain_scale``, by default at the last prime of ``ct``'s
        level (so that one rescale restores ``ct``'s scale). ``fresh`` as for
        :meth:`multiply_plain`."""

    @abc.abstractmethod
    def rescale(self, ct: Ciphertext) -> Ciphertext: ...

    @abc.abstractmethod
    def multiply(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """``a * b`` slot by slot, relinearised and rescaled once."""

    @abc.abstractmethod
    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext: ...

    @abc.abstractmethod
    def add_into(self, total: Ciphertext, ct: Ciphertext) -> Ciphertext:
        """``total += ct`` in place, for two ciphertexts at the same level and scale; returns
        ``total``."""

    @abc.abstractmethod
    def add_plain(self, ct: Ciphertext, values: Values, *, fresh: bool = False) -> Ciphertext:
        """``ct + values``; complex ``values`` set imaginary parts too. ``fresh``: values used
        once (per-query randomness), not kept in the evaluator's cache of model constants."""

    @abc.abstractmethod
    def conjugate(self, ct: Ciphertext) -> Ciphertext:
        """Every slot's complex conjugate (the Galois automorphism of element ``2N - 1``)."""

    @abc.abstractmethod
    def rotate(self, ct: Ciphertext, step: int) -> Ciphertext:
        """Slot ``i`` of the result is slot ``i + step`` of ``ct`` (cyclically)."""

    @abc.abstractmethod
    def scale(self, ct: Ciphertext) -> float: ...


class HEBackend(abc.ABC):
    """A CKKS library."""

    name: str

    @abc.abstractmethod
    def keygen(
        self,
        params: CkksParameters,
        *,
        rotations: Sequence[int],
        relinearization: bool,
        conjugation: bool = False,
    ) -> ClientKeys: ...

    @abc.abstractmethod
    def load_client(self, data: bytes) -> ClientKeys: ...

    @abc.abstractmethod
    def evaluator(
        self,
        params: CkksParameters,
        bundle: bytes,
        *,
        rotations: Sequence[int] = (),
        relinearization: bool = False,
        conjugation: bool = False,
    ) -> Evaluator:
        """An evaluator for ``params`` from a client's public bundle, which must carry the
        evaluation keys for ``rotations`` (and relinearisation keys, and the conjugation key,
        if asked); a bundle for other
        parameters, with missing keys, or with anything else (a secret key) is refused."""


def pack_bundle(header: dict[str, Any], sections: dict[str, bytes]) -> bytes:
    """``MAGIC | u32 header length | JSON header | sections``; the header lists the sections."""
    head = dict(header, sections=[[name, len(data)] for name, data in sections.items()])
    raw = json.dumps(head, sort_keys=True).encode()
    return _MAGIC + struct.pack(">I", len(raw)) + raw + b"".join(sections.values())


def unpack_bundle(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The header and sections of a bundle; anything malformed raises :class:`DataError`."""
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
        raise DataError("not a veil key bundle (bad magic)")
    (size,) = struct.unpack(">I", data[len(_MAGIC) : len(_MAGIC) + 4])
    start = len(_MAGIC) + 4
    if size > 64 * 1024 or start + size > len(data):
        raise DataError("key bundle header is truncated or too large")
    try:
        header = json.loads(data[start : start + size])
        listed = header["sections"]
        offset = start + size
        sections: dict[str, bytes] = {}
        for name, length in listed:
            if not isinstance(name, str) or not isinstance(length, int) or length < 0:
                raise TypeError
            if name in sections:
                raise DataError(f"key bundle lists section {name!r} twice")
            sections[name] = data[offset : offset + length]
            offset += length
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError("key bundle header is not valid") from None
    if offset != len(data):
        raise DataError(
            f"key bundle is {len(data)} bytes but its header accounts for {offset} (truncated?)"
        )
    return header, sections


class _Scratch:
    """SEAL's Python bindings save to and load from file paths only. Where Linux offers it, each
    thread has an anonymous in-memory file (``memfd_create``) that SEAL opens by its
    ``/proc/self/fd`` path: no name in any directory, nothing left after a call (it is emptied
    each time), and no file created or removed per ciphertext. Elsewhere, a private directory
    (in memory where the system has /dev/shm) holds the bytes in flight."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._count = itertools.count()
        self._local = threading.local()
        self._memfd = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")
        self._dir = ""
        if not self._memfd:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - mkdtemp
            self._dir = tempfile.mkdtemp(prefix="veil-he-", dir=base)
            atexit.register(shutil.rmtree, self._dir, ignore_errors=True)

    def path(self) -> str:
        return os.path.join(self._dir, f"{os.getpid()}-{threading.get_ident()}-{next(self._count)}")

    def _buffer(self) -> _MemoryFile:
        buffer: _MemoryFile | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = _MemoryFile()
        return buffer

    def save(self, obj: Any) -> bytes:
        if self._memfd:
            buffer = self._buffer()
            try:
                obj.save(buffer.path)
                return buffer.read()
            finally:
                buffer.clear()
        path = self.path()
        try:
            obj.save(path)
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            if os.path.exists(path):
                os.unlink(path)

    def load(self, obj: Any, context: Any, data: bytes) -> Any:
        if self._memfd:
            buffer = self._buffer()
            try:
                buffer.write(data)
                if context is None:
                    obj.load(buffer.path)
                else:
                    obj.load(context, buffer.path)
                return obj
            finally:
                buffer.clear()
        path = self.path()
        try:
            with open(path, "wb") as fh:
                fh.write(data)
            if context is None:
                obj.load(path)
            else:
                obj.load(context, path)
            return obj
        finally:
            os.unlink(path)


class _MemoryFile:
    """One thread's anonymous in-memory file, closed when the thread's storage goes."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("veil-he", os.MFD_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"

    def write(self, data: bytes) -> None:
        os.ftruncate(self.fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.pwrite(self.fd, view, len(data) - len(view)) :]

    def read(self) -> bytes:
        size = os.fstat(self.fd).st_size
        chunks, offset = [], 0
        while offset < size:
            chunk = os.pread(self.fd, size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)  # (a secret key passes through here too)

    def __del__(self) -> None:
        with contextlib.suppress(OSError):  # already closed at interpreter exit
            os.close(self.fd)


_scratch: _Scratch | None = None
_scratch_lock = threading.Lock()


def _files() -> _Scratch:
    global _scratch
    with _scratch_lock:
        if _scratch is None or _scratch._pid != os.getpid():
            _scratch = _Scratch()
        return _scratch


def _seal() -> Any:
    try:
        import tenseal.sealapi as sealapi
    except ImportError as exc:
        raise MissingDependencyError("tenseal", "he") from exc
    return sealapi


def _galois_element(step: int, n: int) -> int:
    """SEAL's Galois element for a left rotation by ``step`` slots: ``3^step mod 2N``."""
    slots = n // 2
    if not 0 < abs(step) < slots:
        raise ConfigurationError(f"rotation step {step} is out of range for {slots} slots")
    return pow(3, step if step > 0 else slots + step, 2 * n)


def _conjugation_element(n: int) -> int:
    """SEAL's Galois element for complex conjugation of every slot: ``2N - 1``."""
    return 2 * n - 1


class _Context:
    def __init__(self, params: CkksParameters) -> None:
        check_security(params)
        s = _seal()
        self.s = s
        self.params = params
        parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(
            s.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_modulus_bits))
        )
        self.context = s.SEALContext(parms, True, s.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():  # pragma: no cover - check_security comes first
            raise ConfigurationError(
                f"SEAL refused the parameters: {self.context.parameters_error_message()}"
            )
        self.encoder = s.CKKSEncoder(self.context)
        self.scale = float(2**params.scale_bits)

    def last_prime(self, ct: Any) -> float:
        data = self.context.get_context_data(ct.parms_id())
        return float(data.parms().coeff_modulus()[-1].value())

    def chain_index(self, ct: Any) -> int:
        return int(self.context.get_context_data(ct.parms_id()).chain_index())

    def encode(self, values: Values, parms_id: Any, scale: float) -> Any:
        pt = self.s.Plaintext()
        if isinstance(values, np.ndarray) and np.iscomplexobj(values):
            # (``tolist`` makes Python complex numbers in C, ten times faster than a loop)
            self.encoder.encode(values.astype(np.complex128).tolist(), parms_id, scale, pt)
        elif isinstance(values, np.ndarray):
            self.encoder.encode(values.astype(np.float64).tolist(), parms_id, scale, pt)
        elif isinstance(values, complex):
            self.encoder.encode(values, parms_id, scale, pt)
        else:
            self.encoder.encode(float(values), parms_id, scale, pt)
        return pt


class _TenSealKeys(ClientKeys):
    def __init__(
        self,
        ctx: _Context,
        secret: Any,
        *,
        rotations: Sequence[int],
        relinearization: bool,
        conjugation: bool,
    ) -> None:
        s = ctx.s
        self._ctx = ctx
        self._secret = secret
        self.params = ctx.params
        self.rotations = tuple(sorted(set(rotations)))
        self.relinearization = relinearization
        self.conjugation = conjugation
        self._encryptor = s.Encryptor(ctx.context, secret)
        self._decryptor = s.Decryptor(ctx.context, secret)
        self._keygen = s.KeyGenerator(ctx.context, secret)

    def __repr__(self) -> str:
        return f"ClientKeys(backend='tenseal', params={self.params!r})"  # never the key

    def encrypt(self, values: npt.ArrayLike) -> bytes:
        arr = np.asarray(values).ravel()
        arr = arr.astype(np.complex128 if np.iscomplexobj(arr) else np.float64)
        if arr.size > self.params.slots:
            raise DataError(f"{arr.size} values do not fit in {self.params.slots} slots")
        if not np.all(np.isfinite(arr)):
            raise DataError("cannot encrypt NaN or infinite values")
        pt = self._ctx.encode(arr, self._ctx.context.first_parms_id(), self._ctx.scale)
        # Symmetric encryption from the secret key: SEAL saves the seed of the uniform half
        # instead of the half itself, so the upload is half a public-key ciphertext.
        return _files().save(self._encryptor.encrypt_symmetric(pt))

    def _decrypted(self, ciphertext: bytes) -> Any:
        s = self._ctx.s
        try:
            ct = _files().load(s.Ciphertext(), self._ctx.context, ciphertext)
        except Exception:
            raise DataError("the result is not a ciphertext under these keys") from None
        pt = s.Plaintext()
        self._decryptor.decrypt(ct, pt)
        return pt

    def decrypt(self, ciphertext: bytes) -> npt.NDArray[np.float64]:
        pt = self._decrypted(ciphertext)
        return np.asarray(self._ctx.encoder.decode_double(pt), dtype=np.float64)

    def decrypt_complex(self, ciphertext: bytes) -> npt.NDArray[np.complex128]:
        pt = self._decrypted(ciphertext)
        return np.asarray(self._ctx.encoder.decode_complex(pt), dtype=np.complex128)

    def public_bundle(self) -> bytes:
        n = self.params.poly_modulus_degree
        sections: dict[str, bytes] = {}
        if self.relinearization:
            sections["relin_keys"] = _files().save(self._keygen.create_relin_keys())
        elements = [_galois_element(r, n) for r in self.rotations]
        if self.conjugation:
            elements.append(_conjugation_element(n))
        if elements:
            # (SEAL reads a list of non-negative ints as Galois elements, not steps.)
            sections["galois_keys"] = _files().save(self._keygen.create_galois_keys(elements))
        header = {
            "backend": "tenseal",
            "kind": "public",
            "params": self.params.to_dict(),
            "rotations": list(self.rotations),
            "relinearization": self.relinearization,
            "conjugation": self.conjugation,
        }
        return pack_bundle(header, sections)

    def save_secret(self) -> bytes:
        header = {
            "backend": "tenseal",
            "kind": "secret",
            "params": self.params.to_dict(),
            "rotations": list(self.rotations),
            "relinearization": self.relinearization,
            "conjugation": self.conjugation,
        }
        # (the key passes through the thread's anonymous in-memory file, or the process's
        # private scratch directory where there is none, for the moment SEAL takes to write it)
        return pack_bundle(header, {"secret_key": _files().save(self._secret)})


class _TenSealEvaluator(Evaluator):
    def __init__(self, ctx: _Context, relin: Any, galois: Any) -> None:
        self._ctx = ctx
        self.params = ctx.params
        self._relin = relin
        self._galois = galois
        self._ev = ctx.s.Evaluator(ctx.context)
        # The model's plaintexts (weights, masks, coefficients) are the same for every query:
        # encoded once per level and scale (an encoding is an FFT and an NTT per prime).
        self._plaintexts: dict[tuple[Any, ...], Any] = {}
        self._plaintexts_lock = threading.Lock()
        n, k = ctx.params.poly_modulus_degree, len(ctx.params.coeff_modulus_bits) - 1
        # A fresh ciphertext is two polynomials of N coefficients in k residues of 8 bytes;
        # SEAL's header and compression framing add a little.
        self.max_ciphertext_bytes = 2 * n * k * 8 + 4096

    def __repr__(self) -> str:
        return f"Evaluator(backend='tenseal', params={self.params!r})"

    def _encode(self, values: Values, parms_id: Any, scale: float) -> Any:
        raw: bytes | float | complex
        if isinstance(values, np.ndarray):
            raw = values.dtype.str.encode() + values.tobytes()
        elif isinstance(values, complex):
            raw = values
        else:
            raw = float(values)
        key = (raw, tuple(parms_id), scale)
        with self._plaintexts_lock:
            pt = self._plaintexts.get(key)
            if pt is None:
                if len(self._plaintexts) >= 64:
                    self._plaintexts.pop(next(iter(self._plaintexts)))
                pt = self._plaintexts[key] = self._ctx.encode(values, parms_id, scale)
            return pt

    def load(self, data: bytes) -> Ciphertext:
        s = self._ctx.s
        if len(data) > self.max_ciphertext_bytes:
            raise DataError(
                f"ciphertext of {len(data)} bytes is larger than any fresh ciphertext for these "
                f"parameters ({self.max_ciphertext_bytes})"
            )
        try:
            ct = _files().load(s.Ciphertext(), self._ctx.context, data)
        except Exception:
            raise DataError("not a valid ciphertext for this session's parameters") from None
        if ct.parms_id() != self._ctx.context.first_parms_id() or ct.size() != 2:
            raise DataError("the ciphertext is not a fresh encryption at the first level")
        if not ct.is_ntt_form():
            raise DataError("the ciphertext is not in NTT form, as SEAL's CKKS encryptions are")
        if abs(ct.scale / self._ctx.scale - 1) > 1e-9:
            raise DataError(f"the ciphertext is not at scale 2^{self.params.scale_bits}")
        if ct.is_transparent():
            # all-zero mask polynomials: not an encryption (it decrypts without the key), and
            # SEAL refuses to compute on it
            raise DataError("the ciphertext is transparent (not an encryption); encrypt again")
        return ct

    def dump(self, ct: Ciphertext) -> bytes:
        return _files().save(ct)

    def _switched(self, ct: Any, parms_id: Any) -> Any:
        out = self._ctx.s.Ciphertext()
        self._ev.mod_switch_to(ct, parms_id, out)
        return out

    def _align(self, a: Any, b: Any) -> tuple[Any, Any]:
        ia, ib = self._ctx.chain_index(a), self._ctx.chain_index(b)
        if ia > ib:
            a = self._switched(a, b.parms_id())
        elif ib > ia:
            b = self._switched(b, a.parms_id())
        return a, b

    def _check_level(self, ct: Any) -> None:
        if self._ctx.chain_index(ct) < 1:
            raise ConfigurationError(
                "the circuit is deeper than the parameters allow (no level left to rescale)"
            )

    def multiply_plain(
        self, ct: Ciphertext, values: Values, *, target_scale: float, fresh: bool = False
    ) -> Ciphertext:
        self._check_level(ct)
        q = self._ctx.last_prime(ct)
        scale = target_scale * q / ct.scale
        encode = self._ctx.encode if fresh else self._encode
        pt = encode(values, ct.parms_id(), scale)
        out = self._ctx.s.Ciphertext()
        self._ev.multiply_plain(ct, pt, out)
        self._ev.rescale_to_next_inplace(out)
        out.scale = target_scale  # equal up to rounding of the division above
        return out

    def multiply_plain_no_rescale(
        self,
        ct: Ciphertext,
        values: Values,
        *,
        plain_scale: float | None = None,
        fresh: bool = False,
    ) -> Ciphertext:
        if plain_scale is None:
            self._check_level(ct)
            plain_scale = self._ctx.last_prime(ct)
        encode = self._ctx.encode if fresh else self._encode
        pt = encode(values, ct.parms_id(), plain_scale)
        out = self._ctx.s.Ciphertext()
        self._ev.multiply_plain(ct, pt, out)
        return out

    def rescale(self, ct: Ciphertext) -> Ciphertext:
        self._check_level(ct)
        out = self._ctx.s.Ciphertext()
        self._ev.rescale_to_next(ct, out)
        return out

    def multiply(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        if self._relin is None:
            raise ConfigurationError("this session has no relinearisation keys")
        a, b = self._align(a, b)
        self._check_level(a)
        out = self._ctx.s.Ciphertext()
        self._ev.multiply(a, b, out)
        self._ev.relinearize_inplace(out, self._relin)
        self._ev.rescale_to_next_inplace(out)
        return out

    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        a, b = self._align(a, b)
        if abs(a.scale / b.scale - 1) > 1e-9:
            raise ConfigurationError("adding ciphertexts at different scales")  # circuit bug
        b.scale = a.scale  # they differ by rounding only (checked above)
        out = self._ctx.s.Ciphertext()
        self._ev.add(a, b, out)
        return out

    def add_into(self, total: Ciphertext, ct: Ciphertext) -> Ciphertext:
        self._ev.add_inplace(total, ct)
        return total

    def add_plain(self, ct: Ciphertext, values: Values, *, fresh: bool = False) -> Ciphertext:
        if fresh:
            pt = self._ctx.encode(values, ct.parms_id(), ct.scale)
        else:
            pt = self._encode(values, ct.parms_id(), ct.scale)
        out = self._ctx.s.Ciphertext()
        self._ev.add_plain(ct, pt, out)
        return out

    def rotate(self, ct: Ciphertext, step: int) -> Ciphertext:
        if self._galois is None:
            raise ConfigurationError("this session has no Galois keys")
        element = _galois_element(step, self.params.poly_modulus_degree)
        if not self._galois.has_key(element):
            raise ConfigurationError(f"this session has no Galois key for rotation {step}")
        out = self._ctx.s.Ciphertext()
        self._ev.rotate_vector(ct, step, self._galois, out)
        return out

    def conjugate(self, ct: Ciphertext) -> Ciphertext:
        element = _conjugation_element(self.params.poly_modulus_degree)
        if self._galois is None or not self._galois.has_key(element):
            raise ConfigurationError("this session has no conjugation key")
        out = self._ctx.s.Ciphertext()
        self._ev.complex_conjugate(ct, self._galois, out)
        return out

    def scale(self, ct: Ciphertext) -> float:
        return float(ct.scale)


class TenSealBackend(HEBackend):
    """CKKS from Microsoft SEAL, as TenSEAL packages it (``pip install 'veil[he]'``)."""

    name = "tenseal"

    def __init__(self) -> None:
        _seal()
        self._contexts: dict[CkksParameters, _Context] = {}

    def _context(self, params: CkksParameters) -> _Context:
        ctx = self._contexts.get(params)
        if ctx is None:
            ctx = self._contexts[params] = _Context(params)
        return ctx

    def keygen(
        self,
        params: CkksParameters,
        *,
        rotations: Sequence[int],
        relinearization: bool,
        conjugation: bool = False,
    ) -> ClientKeys:
        ctx = self._context(params)
        for r in rotations:
            _galois_element(r, params.poly_modulus_degree)
        keygen = ctx.s.KeyGenerator(ctx.context)
        return _TenSealKeys(
            ctx,
            keygen.secret_key(),
            rotations=rotations,
            relinearization=relinearization,
            conjugation=conjugation,
        )

    def load_client(self, data: bytes) -> ClientKeys:
        header, sections = unpack_bundle(data)
        if header.get("backend") != self.name or header.get("kind") != "secret":
            raise DataError("not a tenseal secret-key file")
        params = CkksParameters.from_dict(header["params"])
        ctx = self._context(params)
        try:
            secret = _files().load(ctx.s.SecretKey(), ctx.context, sections["secret_key"])
        except Exception:
            raise DataError("the secret key file is damaged or for other parameters") from None
        return _TenSealKeys(
            ctx,
            secret,
            rotations=[int(r) for r in header.get("rotations", [])],
            relinearization=bool(header.get("relinearization")),
            conjugation=bool(header.get("conjugation")),
        )

    def evaluator(
        self,
        params: CkksParameters,
        bundle: bytes,
        *,
        rotations: Sequence[int] = (),
        relinearization: bool = False,
        conjugation: bool = False,
    ) -> Evaluator:
        header, sections = unpack_bundle(bundle)
        if header.get("backend") != self.name or header.get("kind") != "public":
            raise DataError("the key bundle is not a public tenseal bundle")
        unexpected = sorted(set(sections) - set(_PUBLIC_SECTIONS))
        if unexpected:
            raise DataError(
                f"the key bundle has section(s) {', '.join(unexpected)}; a server accepts only "
                "public evaluation keys (never a secret key)"
            )
        theirs = header.get("params")
        if theirs != params.to_dict():
            raise DataError(
                f"the key bundle is for parameters {theirs!r}; this circuit needs "
                f"{params.to_dict()!r} (run keygen again for this model and mode)"
            )
        ctx = self._context(params)
        s = ctx.s
        relin = galois = None
        try:
            if "relin_keys" in sections:
                relin = _files().load(s.RelinKeys(), ctx.context, sections["relin_keys"])
            if "galois_keys" in sections:
                galois = _files().load(s.GaloisKeys(), ctx.context, sections["galois_keys"])
        except Exception:
            raise DataError("the evaluation keys in the bundle are malformed") from None
        if relinearization and relin is None:
            raise DataError("the key bundle has no relinearisation keys; this circuit needs them")
        wanted = sorted({int(r) for r in rotations})
        if header.get("rotations") != wanted or bool(header.get("conjugation")) != conjugation:
            # A client of another veil version lays its features out differently (its keys are
            # for other rotations): refused here, with what to do, rather than scored wrongly.
            raise DataError(
                f"the key bundle was made for rotations {header.get('rotations')!r} "
                f"(conjugation {bool(header.get('conjugation'))}); this circuit uses {wanted} "
                f"(conjugation {conjugation}): run keygen again for this server's model and mode"
            )
        n = params.poly_modulus_degree
        for r in rotations:
            if galois is None or not galois.has_key(_galois_element(r, n)):
                raise DataError(f"the key bundle has no Galois key for rotation {r}")
        if conjugation and (galois is None or not galois.has_key(_conjugation_element(n))):
            raise DataError("the key bundle has no conjugation key; this circuit needs it")
        return _TenSealEvaluator(ctx, relin, galois)


def default_backend() -> HEBackend:
    """TenSEAL: the CKKS library that installs from wheels on veil's platforms."""
    return TenSealBackend()
