"""Initial filter criteria and the application servers they send requests to.

:mod:`.model` holds a service profile as data, :mod:`.match` the 3GPP matching rules (asked through
the ``ims_ifc_match`` hook), :mod:`.odi` the original-dialog identifier of a request routed through
an AS, and :mod:`.routing` what the proxy does with matching iFCs. See ``docs/ifc.rst``.
"""

from .match import ifc_matches, matching_ifcs, spt_matches, trigger_matches
from .model import (
    DEFAULT_HANDLINGS,
    REGISTRATION_TYPES,
    SESSION_CASES,
    SESSION_CONTINUED,
    SESSION_TERMINATED,
    SPT_KINDS,
    ApplicationServer,
    Ifc,
    IfcFacts,
    ServiceProfile,
    Spt,
    TriggerPoint,
)

__all__ = [
    "DEFAULT_HANDLINGS",
    "REGISTRATION_TYPES",
    "SESSION_CASES",
    "SESSION_CONTINUED",
    "SESSION_TERMINATED",
    "SPT_KINDS",
    "ApplicationServer",
    "Ifc",
    "IfcFacts",
    "ServiceProfile",
    "Spt",
    "TriggerPoint",
    "ifc_matches",
    "matching_ifcs",
    "spt_matches",
    "trigger_matches",
]
