"""An example imscore plugin: the ``newest-first`` forking strategy.

An incoming call first rings only the device that registered most recently (the phone the user
just picked up, say) for ``first_timeout`` seconds; if it does not answer, every other device rings
at once.
"""

from imscore.plugin import BranchGroup, hookimpl

STRATEGY = "newest-first"


@hookimpl
def ims_policy_names():
    # the names a profile may select: ``policies: {forking: {plugin: newest-first}}``
    return {"forking": [STRATEGY]}


@hookimpl
def ims_fork_plan(contacts, strategy, options):
    if strategy != STRATEGY:
        return None  # not ours: let the next plugin (in the end, the builtin defaults) answer
    newest, *others = reversed(contacts)  # contacts arrive oldest first
    first = BranchGroup(targets=(newest.contact,), timeout=float(options.get("first_timeout", 10)))
    if not others:
        return (first,)
    return (first, BranchGroup(targets=tuple(b.contact for b in reversed(others))))
