"""The reverse-mode autograd engine.

Three pieces, each small enough to read in one sitting:

* :class:`Function` — one subclass per primitive (see ``axon/ops.py``). ``forward(ctx, *arrays)``
  and ``backward(ctx, grad)`` work on plain NumPy arrays; :meth:`Function.apply` wraps the
  arrays in and out of :class:`~axon.Tensor` and records the node when a gradient is needed.
* :class:`TensorBase` — the slots of a tensor the engine reads (array, flag, grad, node).
  ``axon.Tensor`` subclasses it; the engine never names ``Tensor`` itself (a result is made by
  the ``_make`` of a tensor input), so this module sits below ``ops.py`` and ``tensor.py`` in
  the import graph: grad mode and graph nodes, then the ops, then the Tensor's methods.
* :class:`Context` — what a node remembers between forward and backward
  (``ctx.save_for_backward`` is a no-op when no gradient is needed).
* :func:`backward` — an iterative topological sort of the graph followed by one pass in
  reverse order. It is the only place that un-broadcasts gradients, checks their shapes, and
  frees each node's saved arrays once used.

Gradients are first-order only: ``backward`` functions compute with NumPy arrays, so the
graph of the backward pass itself is not recorded (no double backward).
"""

from __future__ import annotations

import functools

import numpy as np

from axon_kernels.workers import Deferred

__all__ = [
    "TensorBase",
    "Function",
    "Context",
    "backward",
    "no_grad",
    "enable_grad",
    "set_grad_enabled",
    "is_grad_enabled",
]


class _GradMode:
    enabled = True


def is_grad_enabled() -> bool:
    """True unless inside ``no_grad()`` (or ``set_grad_enabled(False)``)."""
    return _GradMode.enabled


class set_grad_enabled:
    """Context manager / decorator turning graph recording on or off."""

    def __init__(self, mode: bool):
        self.mode = bool(mode)
        self.prev = _GradMode.enabled
        _GradMode.enabled = self.mode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _GradMode.enabled = self.prev
        return False


class _GradModeGuard:
    _mode = True

    def __enter__(self):
        self.prev = _GradMode.enabled
        _GradMode.enabled = self._mode
        return self

    def __exit__(self, *exc):
        _GradMode.enabled = self.prev
        return False

    def __call__(self, fn):
        mode = self._mode

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev = _GradMode.enabled
            _GradMode.enabled = mode
            try:
                return fn(*args, **kwargs)
            finally:
                _GradMode.enabled = prev

        return wrapper


class no_grad(_GradModeGuard):
    """Inside ``with axon.no_grad():`` (or on a decorated function) no graph is recorded."""

    _mode = False


class enable_grad(_GradModeGuard):
    """Re-enable graph recording inside a ``no_grad`` block."""

    _mode = True


class TensorBase:
    """The part of a tensor the autograd engine sees: ``_data`` (an ndarray), ``_requires_grad``,
    ``grad`` and ``_ctx`` (the :class:`Context` that produced it, None for leaves).

    :class:`axon.Tensor` subclasses it and implements ``_make(arr)``, the unchecked constructor
    :meth:`Function.apply` and :func:`backward` call on a tensor input to wrap a result array.
    """

    __slots__ = ("_data", "_requires_grad", "grad", "_ctx", "__weakref__")

    @classmethod
    def _make(cls, arr: np.ndarray):  # pragma: no cover - interface
        raise NotImplementedError


class Context:
    """Per-node memory between forward and backward.

    ``needs_input_grad[i]`` says whether positional input ``i`` needs a gradient, so a backward
    can skip work. Arrays stored with :meth:`save_for_backward` are released after the
    node's backward ran (unless ``retain_graph=True``).
    """

    __slots__ = ("needs_input_grad", "_recording", "_saved", "fn", "inputs", "released", "__dict__")

    def __init__(self, needs_input_grad: tuple, recording: bool):
        self.needs_input_grad = needs_input_grad
        self._recording = recording
        self._saved = ()
        self.fn = None
        self.inputs = None  # tuple of parent Tensors (None where no grad flows)
        self.released = False

    def save_for_backward(self, *arrays) -> None:
        """Keep ``arrays`` for the backward pass; a no-op when no gradient is needed."""
        if self._recording:
            self._saved = arrays

    @property
    def saved_tensors(self) -> tuple:
        """The arrays given to :meth:`save_for_backward`; RuntimeError once the node was released."""
        if self.released:
            raise RuntimeError(
                "Trying to backward through the graph a second time: its saved arrays were "
                "freed. Pass retain_graph=True to the first backward() to keep them."
            )
        return self._saved

    def release(self) -> None:
        """Drop everything the node holds (saved arrays, attributes, parent links)."""
        self.__dict__.clear()  # attributes a forward stored (ctx.axis, ctx.shape, ...)
        self.inputs = None
        self._saved = ()
        self.released = True


def _reraise(fn_name: str, args, err: Exception):
    """Turn a NumPy error inside an op into one short error naming the op and its input shapes."""
    text = str(err)
    if text.replace("_", "").lower().startswith(fn_name.lower()):
        msg = text  # an axon message that already names the op
    else:
        shapes = [tuple(a.shape) for a in args if hasattr(a, "shape")]
        msg = f"{fn_name}: {text} (input shapes {shapes})" if shapes else f"{fn_name}: {text}"
    if isinstance(err, IndexError):
        return IndexError(msg)
    if isinstance(err, TypeError):
        return TypeError(msg)
    return ValueError(msg)


class Function:
    """Base class of every differentiable primitive.

    Subclasses define two static methods working on NumPy arrays::

        @staticmethod
        def forward(ctx, a, b, *, some_option=...):  -> np.ndarray
        @staticmethod
        def backward(ctx, grad):  -> tuple with one array (or None) per positional input

    A backward may return a gradient with the *broadcast* shape of its input; the engine
    reduces it. A backward must never write into ``grad`` (it may be shared).

    A subclass whose backward always returns newly allocated arrays, none of them returned
    twice or kept elsewhere, sets ``fresh_grads = True``: the engine then adds later gradients
    into them in place and hands them to leaves without a copy.
    """

    fresh_grads = False

    @staticmethod
    def forward(ctx, *args, **kwargs):  # pragma: no cover - interface
        """Compute the output array from the input arrays; save what backward needs on ``ctx``."""
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - interface
        """Map ``grad`` (the output's shape) to one gradient array (or None) per positional input."""
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        """Run ``forward`` on the arrays behind ``args`` and record the node if needed."""
        raw = []
        inputs = []  # parent Tensors that need a gradient, None elsewhere
        any_needs = False
        first = None  # the first tensor argument: its _make wraps the result
        for a in args:
            if isinstance(a, TensorBase):
                first = a if first is None else first
                raw.append(a.data)
                if a._requires_grad:
                    inputs.append(a)
                    any_needs = True
                    continue
            else:
                raw.append(a)
            inputs.append(None)
        if first is None:
            raise TypeError(f"{cls.__name__}.apply: at least one argument must be an axon.Tensor")
        recording = any_needs and _GradMode.enabled
        ctx = Context(tuple([i is not None for i in inputs]), recording)
        try:
            out = cls.forward(ctx, *raw, **kwargs)
        except (ValueError, TypeError, IndexError) as err:
            raise _reraise(cls.__name__, raw, err) from None
        result = first._make(out)
        if recording and result.data.dtype.kind == "f":
            ctx.fn = cls
            ctx.inputs = inputs  # the edges of the graph
            result._requires_grad = True
            result._ctx = ctx
        return result


def _unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` down to ``shape`` (the inverse of NumPy broadcasting)."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra < 0:
        return grad.reshape(shape).copy()  # only a reshape (e.g. a 0-d input seen as 1-element)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1
    )
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _topological_order(root_ctx: Context) -> list:
    """Nodes reachable from ``root_ctx``, each after every node that consumes its output.

    Iterative depth-first post-order (an explicit stack), so a 100k-node chain does not hit
    Python's recursion limit.
    """
    post = []
    visited = {id(root_ctx)}
    stack = [(root_ctx, 0)]
    while stack:
        ctx, i = stack[-1]
        inputs = ctx.inputs
        if inputs is None:
            raise RuntimeError(
                "Trying to backward through the graph a second time: it was freed by the "
                "first backward(). Pass retain_graph=True to the first call to keep it."
            )
        pushed = False
        while i < len(inputs):
            parent = inputs[i]
            i += 1
            if parent is not None:
                pctx = parent._ctx
                if pctx is not None and id(pctx) not in visited:
                    visited.add(id(pctx))
                    stack[-1] = (ctx, i)
                    stack.append((pctx, 0))
                    pushed = True
                    break
        if not pushed:
            stack.pop()
            post.append(ctx)
    post.reverse()  # consumers before producers
    return post


def _accumulate_leaf(leaf, grad: np.ndarray, fresh: bool) -> None:
    """Add ``grad`` into ``leaf.grad`` (an axon.Tensor), copying unless we own ``grad``."""
    if leaf.grad is None:
        leaf.grad = leaf._make(grad if fresh else np.array(grad, copy=True))
    else:
        acc = leaf.grad.data
        np.add(acc, grad, out=acc)


def backward(root, gradient=None, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) into ``leaf.grad`` for every leaf that requires grad."""
    if root.dtype.kind != "f":
        raise TypeError(f"cannot backward through a tensor of dtype {root.dtype}: only floating tensors have gradients")
    if not root._requires_grad:
        raise RuntimeError("backward(): the tensor does not require grad and has no grad_fn")
    if gradient is None:
        if root.data.size != 1:
            raise RuntimeError(
                f"backward() on a non-scalar tensor of shape {tuple(root.shape)} needs an explicit "
                "gradient: call t.backward(gradient) with a tensor of the same shape, or reduce t first"
            )
        seed = np.ones(root.shape, dtype=root.dtype)
    else:
        seed = np.asarray(gradient.data if isinstance(gradient, TensorBase) else gradient, dtype=root.dtype)
        if seed.shape != tuple(root.shape):
            raise ValueError(f"backward(): gradient shape {seed.shape} does not match tensor shape {tuple(root.shape)}")

    if root._ctx is None:  # a leaf: d(root)/d(root) = seed
        _accumulate_leaf(root, seed, fresh=gradient is None)
        return

    order = _topological_order(root._ctx)
    grads = {id(root._ctx): seed}  # gradient w.r.t. the output of each pending node
    owned = set()  # nodes whose gradient buffer we allocated ourselves (safe to add into in place)
    deferred = []  # (leaf, Deferred, Function) of gradients computed meanwhile (axon_kernels.workers.defer)
    for ctx in order:
        grad = grads.pop(id(ctx), None)
        if grad is None:
            if not retain_graph:
                ctx.release()
            continue
        kept = ctx.__dict__.get("retained")  # set by Tensor.retain_grad()
        if kept is not None and kept() is not None:
            _accumulate_leaf(kept(), grad, fresh=False)
        in_grads = ctx.fn.backward(ctx, grad)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        if len(in_grads) != len(ctx.inputs):
            raise AssertionError(f"{ctx.fn.__name__}.backward returned {len(in_grads)} gradients for {len(ctx.inputs)} inputs")
        for parent, g in zip(ctx.inputs, in_grads):
            if parent is None or g is None:
                continue
            if isinstance(g, Deferred):  # computed on a helper thread meanwhile
                if parent._ctx is None:
                    deferred.append((parent, g, ctx.fn))  # a leaf's: added when everything else is done
                    continue
                g = g.result()
            shape = parent.shape
            fresh = ctx.fn.fresh_grads or g.shape != shape  # _unbroadcast allocates a new array
            if fresh:
                try:
                    g = _unbroadcast(g, shape)
                except ValueError:
                    pass  # reported just below
            if g.shape != shape:  # the one shape check of every gradient
                raise AssertionError(f"{ctx.fn.__name__}.backward gave a gradient of shape {g.shape} for an input of shape {shape}")
            if g.dtype != parent.dtype:
                g = g.astype(parent.dtype)
                fresh = True
            pctx = parent._ctx
            if pctx is None:
                _accumulate_leaf(parent, g, fresh)
                continue
            key = id(pctx)
            prev = grads.get(key)
            if prev is None:
                grads[key] = g
                if fresh:
                    owned.add(key)
            elif key in owned:
                np.add(prev, g, out=prev)
            else:
                grads[key] = prev + g
                owned.add(key)
        if not retain_graph:
            ctx.release()
    for leaf, d, fn in deferred:  # in the order the backward produced them
        g = d.result()
        if g.shape != leaf.shape:
            raise AssertionError(f"{fn.__name__}.backward gave a gradient of shape {g.shape} for an input of shape {leaf.shape}")
        fresh = fn.fresh_grads
        if g.dtype != leaf.dtype:
            g = g.astype(leaf.dtype)
            fresh = True
        _accumulate_leaf(leaf, g, fresh)

