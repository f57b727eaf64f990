"""Option haggling of the NBD fixed newstyle handshake, as a state machine with no IO.

A :class:`Negotiation` takes one option at a time (:meth:`Negotiation.handle`)
and returns an :class:`Outcome`: the replies to send and what happens next
(go on, enter transmission, upgrade to TLS, close).  It looks exports up
through a catalogue with two methods, ``lookup(name) -> Export | None`` and
``names() -> list[str]``; the server supplies one over a pool.

What it does, from the NBD protocol (``doc/proto.md``):

* ``NBD_OPT_GO`` / ``NBD_OPT_INFO``: ``NBD_INFO_EXPORT`` always,
  ``NBD_INFO_BLOCK_SIZE`` always (the client MAY ignore it), ``NBD_INFO_NAME``
  and ``NBD_INFO_DESCRIPTION`` when asked; ``NBD_REP_ERR_UNKNOWN`` for an
  export that does not exist (there is no default export: the empty name
  is unknown).
* ``NBD_OPT_EXPORT_NAME``: the old way in; an unknown name can only be
  answered by closing (the spec's MUST).
* ``NBD_OPT_LIST``, ``NBD_OPT_ABORT``, ``NBD_OPT_STRUCTURED_REPLY``.
* ``NBD_OPT_LIST_META_CONTEXT`` / ``NBD_OPT_SET_META_CONTEXT`` with the one
  context there is, ``base:allocation`` (``base:`` lists it; other
  namespaces are ignored, as the spec says).
* ``NBD_OPT_STARTTLS``: with TLS configured the server is in FORCEDTLS
  mode (every other option but ``NBD_OPT_ABORT`` gets
  ``NBD_REP_ERR_TLS_REQD`` until TLS is up); without, ``NBD_REP_ERR_POLICY``.
* Anything else: ``NBD_REP_ERR_UNSUP``.  A malformed option:
  ``NBD_REP_ERR_INVALID`` with a message saying what was wrong.
"""
from __future__ import annotations

import dataclasses
import enum

from . import protocol as P

# The context id of base:allocation (opaque to clients; any nonzero value).
ALLOCATION_ID = 1
# Options one connection may send before the server gives up on it.
MAX_OPTIONS = 4096


@dataclasses.dataclass
class Export:
    """What the handshake needs to know about an export."""

    name: str
    size: int
    readonly: bool
    description: str = ""
    target: object = None     # what the server serves it from (a Device)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """The block size constraints the server advertises."""

    minimum: int = 1
    preferred: int = 4096
    maximum: int = 32 << 20


class Action(enum.Enum):
    CONTINUE = "continue"        # send the replies, read the next option
    TRANSMISSION = "transmission"  # send the replies, then serve `export` with `session`
    STARTTLS = "starttls"        # send the replies (an ACK), then upgrade to TLS
    CLOSE = "close"              # send the replies, then end the connection


@dataclasses.dataclass
class Outcome:
    replies: list
    action: Action = Action.CONTINUE
    export: Export | None = None
    session: P.Session | None = None
    reason: str = ""             # why the connection closes (for the log)


class Negotiation:
    """The option phase of one connection.

    ``client_flags``: what the client sent after the greeting.
    ``tls``: the server can upgrade (FORCEDTLS until it has).
    ``refusal``: a message; when set, every option but NBD_OPT_ABORT is
    answered NBD_REP_ERR_POLICY with it and the connection closes (used
    when the server has no room for another client).
    ``shutting_down``: a callable; when it returns true, options get
    NBD_REP_ERR_SHUTDOWN.
    """

    def __init__(self, catalogue, client_flags=P.FLAG_C_FIXED_NEWSTYLE, *, tls=False,
                 block_sizes=BlockSizes(), refusal=None, shutting_down=lambda: False):
        self.catalogue = catalogue
        self.no_zeroes = bool(client_flags & P.FLAG_C_NO_ZEROES)
        self.tls_available = tls
        self.tls_active = False
        self.block_sizes = block_sizes
        self.refusal = refusal
        self.shutting_down = shutting_down
        self.options_seen = 0
        self._reset()

    def _reset(self):
        self.structured = False
        self.contexts = {}        # id -> name, selected by the last SET
        self.contexts_for = None  # the export name that SET named

    def tls_started(self):
        """The server completed the TLS upgrade: negotiation starts afresh."""
        self.tls_active = True
        self._reset()

    # -- the dispatcher ---------------------------------------------------------

    def handle(self, opt, data):
        """The :class:`Outcome` of option ``opt`` with ``data`` (its payload)."""
        self.options_seen += 1
        if opt == P.OPT_ABORT:  # always answered, whatever the mode (data ignored)
            return Outcome([P.encode_option_reply(opt, P.REP_ACK)], Action.CLOSE,
                           reason="client sent NBD_OPT_ABORT")
        if self.options_seen > MAX_OPTIONS:
            return self._close_with(opt, P.REP_ERR_POLICY,
                                    f"more than {MAX_OPTIONS} options on one connection")
        if self.refusal is not None:
            return self._close_with(opt, P.REP_ERR_POLICY, self.refusal)
        if self.shutting_down():
            return self._close_with(opt, P.REP_ERR_SHUTDOWN, "the server is shutting down")
        if self.tls_available and not self.tls_active and opt != P.OPT_STARTTLS:
            if opt == P.OPT_EXPORT_NAME:  # cannot be answered with an error
                return Outcome([], Action.CLOSE,
                               reason="NBD_OPT_EXPORT_NAME before TLS on a TLS server")
            return self._error(opt, P.REP_ERR_TLS_REQD,
                               "this server requires TLS: send NBD_OPT_STARTTLS first")
        handler = self._HANDLERS.get(opt)
        if handler is None:
            return self._error(opt, P.REP_ERR_UNSUP,
                               f"{P.option_name(opt)} is not supported by this server")
        try:
            return handler(self, opt, data)
        except P.OptionError as exc:
            return self._error(opt, exc.reply, f"{P.option_name(opt)}: {exc}")

    @staticmethod
    def _error(opt, reply, message):
        return Outcome([P.encode_option_error(opt, reply, message)])

    @staticmethod
    def _close_with(opt, reply, message):
        return Outcome([P.encode_option_error(opt, reply, message)], Action.CLOSE,
                       reason=message)

    @staticmethod
    def _no_data(opt, data):
        if data:
            raise P.OptionError(f"takes no data, got {len(data)} bytes")

    # -- options ------------------------------------------------------------------

    def _list(self, opt, data):
        self._no_data(opt, data)
        replies = [P.encode_rep_server(opt, name) for name in self.catalogue.names()]
        replies.append(P.encode_option_reply(opt, P.REP_ACK))
        return Outcome(replies)

    def _structured_reply(self, opt, data):
        self._no_data(opt, data)
        self.structured = True
        return Outcome([P.encode_option_reply(opt, P.REP_ACK)])

    def _starttls(self, opt, data):
        self._no_data(opt, data)
        if self.tls_active:
            raise P.OptionError("TLS is already active")
        if not self.tls_available:
            raise P.OptionError("TLS is not configured on this server (serve --tls-cert)",
                                P.REP_ERR_POLICY)
        return Outcome([P.encode_option_reply(opt, P.REP_ACK)], Action.STARTTLS)

    def _lookup(self, name):
        export = self.catalogue.lookup(name)
        if export is None:
            if name == "":
                raise P.OptionError("there is no default export: name one "
                                    "(nbdinfo --list shows them)", P.REP_ERR_UNKNOWN)
            raise P.OptionError(f"no export named {name!r}", P.REP_ERR_UNKNOWN)
        return export

    def transmission_flags(self, export):
        f = (P.FLAG_HAS_FLAGS | P.FLAG_SEND_FLUSH | P.FLAG_SEND_FUA | P.FLAG_SEND_CACHE
             | P.FLAG_CAN_MULTI_CONN)
        if export.readonly:
            f |= P.FLAG_READ_ONLY
        else:
            f |= P.FLAG_SEND_TRIM | P.FLAG_SEND_WRITE_ZEROES | P.FLAG_SEND_FAST_ZERO
        if self.structured:
            f |= P.FLAG_SEND_DF
        return f

    def _info_or_go(self, opt, data):
        name, infos = P.parse_export_request(data)
        export = self._lookup(name)
        flags = self.transmission_flags(export)
        bs = self.block_sizes
        replies = [P.encode_info_export(opt, export.size, flags),
                   P.encode_info_block_size(opt, bs.minimum, bs.preferred, bs.maximum)]
        if P.INFO_NAME in infos:
            replies.append(P.encode_info_name(opt, export.name))
        if P.INFO_DESCRIPTION in infos and export.description:
            replies.append(P.encode_info_description(opt, export.description))
        replies.append(P.encode_option_reply(opt, P.REP_ACK))
        if opt == P.OPT_INFO:
            return Outcome(replies)
        return Outcome(replies, Action.TRANSMISSION, export, self._session(export, flags))

    def _session(self, export, flags):
        contexts = tuple(self.contexts) if self.contexts_for == export.name else ()
        return P.Session(size=export.size, flags=flags, structured=self.structured,
                         contexts=contexts, minimum=self.block_sizes.minimum,
                         maximum=self.block_sizes.maximum)

    def _export_name(self, opt, data):
        try:
            name = P.decode_string(bytes(data), "export name")
            export = self.catalogue.lookup(name)
        except P.OptionError as exc:
            return Outcome([], Action.CLOSE, reason=f"NBD_OPT_EXPORT_NAME: {exc}")
        if export is None:
            return Outcome([], Action.CLOSE,
                           reason=f"NBD_OPT_EXPORT_NAME: no export named {name!r}")
        flags = self.transmission_flags(export)
        return Outcome([P.encode_export_name_reply(export.size, flags, self.no_zeroes)],
                       Action.TRANSMISSION, export, self._session(export, flags))

    def _contexts_matching(self, queries, listing):
        """The (id, name) contexts the queries select; ``listing`` allows the
        ``base:`` wildcard and no queries meaning all."""
        if listing and not queries:
            return [(0, P.BASE_ALLOCATION)]
        found = []
        for q in queries:
            ns, colon, leaf = q.partition(":")
            if not colon or not ns:
                raise P.OptionError(f"query {q!r} does not start with a namespace and a colon")
            if ns != "base":
                continue  # unknown namespaces are ignored
            if leaf == "allocation" or (listing and leaf == ""):
                ctx = (0 if listing else ALLOCATION_ID, P.BASE_ALLOCATION)
                if ctx not in found:
                    found.append(ctx)
        return found

    def _meta_context(self, opt, data):
        setting = opt == P.OPT_SET_META_CONTEXT
        if setting:  # replaced even when this option fails
            self.contexts, self.contexts_for = {}, None
        if not self.structured:
            raise P.OptionError("needs NBD_OPT_STRUCTURED_REPLY first")
        name, queries = P.parse_meta_context_request(data)
        self._lookup(name)
        found = self._contexts_matching(queries, listing=not setting)
        if setting:
            self.contexts = dict(found)
            self.contexts_for = name
        replies = [P.encode_rep_meta_context(opt, cid, cname) for cid, cname in found]
        replies.append(P.encode_option_reply(opt, P.REP_ACK))
        return Outcome(replies)

    _HANDLERS = {
        P.OPT_LIST: _list,
        P.OPT_STRUCTURED_REPLY: _structured_reply,
        P.OPT_STARTTLS: _starttls,
        P.OPT_INFO: _info_or_go,
        P.OPT_GO: _info_or_go,
        P.OPT_EXPORT_NAME: _export_name,
        P.OPT_LIST_META_CONTEXT: _meta_context,
        P.OPT_SET_META_CONTEXT: _meta_context,
    }
