"""The Diameter dictionary imscore speaks: base protocol (RFC 6733) and Cx/Dx (TS 29.228/29.229).

Codes, vendors and data types of the AVPs, command codes, and the result codes used. The codes are
those of 3GPP TS 29.229 §6.3 (Cx AVPs, vendor 10415), RFC 6733 §4.5 (base AVPs) and RFC 4590 /
RFC 4740 (the Digest-* AVPs inside SIP-Digest-Authenticate, vendor 0, as TS 29.229 §6.3.36 uses
them). Note that TS 29.229 carries the MAR/MAA authentication data in its own vendor-10415 AVPs
(SIP-Auth-Data-Item 612, SIP-Authentication-Scheme 608, SIP-Item-Number 613, SIP-Number-Auth-Items
607), not in the RFC 4740 vendor-0 AVPs 376/377/378/382 of the same names.
"""

from __future__ import annotations

from enum import Enum
from typing import Final, NamedTuple

__all__ = ["AVPS", "COMMANDS", "AvpDef", "AvpType", "avp_name", "command_name"]

VENDOR_3GPP: Final = 10415
CX_APPLICATION: Final = 16777216
RELAY_APPLICATION: Final = 0xFFFFFFFF

# -- commands (RFC 6733 §3.1, TS 29.229 §6.1) --------------------------------------------------------
CER: Final = 257  # Capabilities-Exchange
DWR: Final = 280  # Device-Watchdog
DPR: Final = 282  # Disconnect-Peer
UAR: Final = 300  # User-Authorization
SAR: Final = 301  # Server-Assignment
LIR: Final = 302  # Location-Info
MAR: Final = 303  # Multimedia-Auth
RTR: Final = 304  # Registration-Termination
PPR: Final = 305  # Push-Profile

COMMANDS: Final[dict[int, tuple[str, str]]] = {
    CER: ("CER", "CEA"),
    DWR: ("DWR", "DWA"),
    DPR: ("DPR", "DPA"),
    UAR: ("UAR", "UAA"),
    SAR: ("SAR", "SAA"),
    LIR: ("LIR", "LIA"),
    MAR: ("MAR", "MAA"),
    RTR: ("RTR", "RTA"),
    PPR: ("PPR", "PPA"),
}


def command_name(code: int, request: bool) -> str:
    """``UAR``/``UAA`` and so on; ``command 999 request`` for a code not in the dictionary."""
    names = COMMANDS.get(code)
    if names is None:
        return f"command {code} {'request' if request else 'answer'}"
    return names[0] if request else names[1]


# -- AVPs ------------------------------------------------------------------------------------------
class AvpType(Enum):
    """RFC 6733 §4.2/§4.3 data formats."""

    OCTETS = "OctetString"
    UTF8 = "UTF8String"
    IDENTITY = "DiameterIdentity"
    U32 = "Unsigned32"
    I32 = "Integer32"
    U64 = "Unsigned64"
    ENUM = "Enumerated"
    GROUPED = "Grouped"
    ADDRESS = "Address"


class AvpDef(NamedTuple):
    """One dictionary entry."""

    name: str
    code: int
    vendor: int
    type: AvpType


# base protocol (RFC 6733 §4.5) and the vendor-0 AVPs Cx uses
USER_NAME: Final = 1
DIGEST_REALM: Final = 104
DIGEST_QOP: Final = 110
DIGEST_ALGORITHM: Final = 111
DIGEST_HA1: Final = 121
HOST_IP_ADDRESS: Final = 257
AUTH_APPLICATION_ID: Final = 258
ACCT_APPLICATION_ID: Final = 259
VENDOR_SPECIFIC_APPLICATION_ID: Final = 260
SESSION_ID: Final = 263
ORIGIN_HOST: Final = 264
SUPPORTED_VENDOR_ID: Final = 265
VENDOR_ID: Final = 266
FIRMWARE_REVISION: Final = 267
RESULT_CODE: Final = 268
PRODUCT_NAME: Final = 269
DISCONNECT_CAUSE: Final = 273
AUTH_SESSION_STATE: Final = 277
ORIGIN_STATE_ID: Final = 278
FAILED_AVP: Final = 279
ERROR_MESSAGE: Final = 281
ROUTE_RECORD: Final = 282
DESTINATION_REALM: Final = 283
PROXY_INFO: Final = 284
INBAND_SECURITY_ID: Final = 299
DESTINATION_HOST: Final = 293
ORIGIN_REALM: Final = 296
EXPERIMENTAL_RESULT: Final = 297
EXPERIMENTAL_RESULT_CODE: Final = 298
# Cx/Dx (TS 29.229 §6.3), vendor 10415
VISITED_NETWORK_IDENTIFIER: Final = 600
PUBLIC_IDENTITY: Final = 601
SERVER_NAME: Final = 602
SERVER_CAPABILITIES: Final = 603
MANDATORY_CAPABILITY: Final = 604
OPTIONAL_CAPABILITY: Final = 605
USER_DATA: Final = 606
SIP_NUMBER_AUTH_ITEMS: Final = 607
SIP_AUTHENTICATION_SCHEME: Final = 608
SIP_AUTHENTICATE: Final = 609
SIP_AUTHORIZATION: Final = 610
SIP_AUTHENTICATION_CONTEXT: Final = 611
SIP_AUTH_DATA_ITEM: Final = 612
SIP_ITEM_NUMBER: Final = 613
SERVER_ASSIGNMENT_TYPE: Final = 614
DEREGISTRATION_REASON: Final = 615
REASON_CODE: Final = 616
REASON_INFO: Final = 617
CHARGING_INFORMATION: Final = 618
USER_AUTHORIZATION_TYPE: Final = 623
USER_DATA_ALREADY_AVAILABLE: Final = 624
CONFIDENTIALITY_KEY: Final = 625
INTEGRITY_KEY: Final = 626
SUPPORTED_FEATURES: Final = 628
FEATURE_LIST_ID: Final = 629
FEATURE_LIST: Final = 630
ASSOCIATED_IDENTITIES: Final = 632
ORIGINATING_REQUEST: Final = 633
SIP_DIGEST_AUTHENTICATE: Final = 635
MULTIPLE_REGISTRATION_INDICATION: Final = 648
SAR_FLAGS: Final = 655

_O, _U, _I, _N = AvpType.OCTETS, AvpType.UTF8, AvpType.IDENTITY, AvpType.U32
_G, _E = AvpType.GROUPED, AvpType.ENUM
_V = VENDOR_3GPP

_DEFS: Final = (
    AvpDef("User-Name", USER_NAME, 0, _U),
    AvpDef("Digest-Realm", DIGEST_REALM, 0, _U),
    AvpDef("Digest-QoP", DIGEST_QOP, 0, _U),
    AvpDef("Digest-Algorithm", DIGEST_ALGORITHM, 0, _U),
    AvpDef("Digest-HA1", DIGEST_HA1, 0, _U),
    AvpDef("Host-IP-Address", HOST_IP_ADDRESS, 0, AvpType.ADDRESS),
    AvpDef("Auth-Application-Id", AUTH_APPLICATION_ID, 0, _N),
    AvpDef("Acct-Application-Id", ACCT_APPLICATION_ID, 0, _N),
    AvpDef("Vendor-Specific-Application-Id", VENDOR_SPECIFIC_APPLICATION_ID, 0, _G),
    AvpDef("Session-Id", SESSION_ID, 0, _U),
    AvpDef("Origin-Host", ORIGIN_HOST, 0, _I),
    AvpDef("Supported-Vendor-Id", SUPPORTED_VENDOR_ID, 0, _N),
    AvpDef("Vendor-Id", VENDOR_ID, 0, _N),
    AvpDef("Firmware-Revision", FIRMWARE_REVISION, 0, _N),
    AvpDef("Result-Code", RESULT_CODE, 0, _N),
    AvpDef("Product-Name", PRODUCT_NAME, 0, _U),
    AvpDef("Disconnect-Cause", DISCONNECT_CAUSE, 0, _E),
    AvpDef("Auth-Session-State", AUTH_SESSION_STATE, 0, _E),
    AvpDef("Origin-State-Id", ORIGIN_STATE_ID, 0, _N),
    AvpDef("Failed-AVP", FAILED_AVP, 0, _G),
    AvpDef("Error-Message", ERROR_MESSAGE, 0, _U),
    AvpDef("Route-Record", ROUTE_RECORD, 0, _I),
    AvpDef("Destination-Realm", DESTINATION_REALM, 0, _I),
    AvpDef("Proxy-Info", PROXY_INFO, 0, _G),
    AvpDef("Inband-Security-Id", INBAND_SECURITY_ID, 0, _N),
    AvpDef("Destination-Host", DESTINATION_HOST, 0, _I),
    AvpDef("Origin-Realm", ORIGIN_REALM, 0, _I),
    AvpDef("Experimental-Result", EXPERIMENTAL_RESULT, 0, _G),
    AvpDef("Experimental-Result-Code", EXPERIMENTAL_RESULT_CODE, 0, _N),
    AvpDef("Visited-Network-Identifier", VISITED_NETWORK_IDENTIFIER, _V, _O),
    AvpDef("Public-Identity", PUBLIC_IDENTITY, _V, _U),
    AvpDef("Server-Name", SERVER_NAME, _V, _U),
    AvpDef("Server-Capabilities", SERVER_CAPABILITIES, _V, _G),
    AvpDef("Mandatory-Capability", MANDATORY_CAPABILITY, _V, _N),
    AvpDef("Optional-Capability", OPTIONAL_CAPABILITY, _V, _N),
    AvpDef("User-Data", USER_DATA, _V, _O),
    AvpDef("SIP-Number-Auth-Items", SIP_NUMBER_AUTH_ITEMS, _V, _N),
    AvpDef("SIP-Authentication-Scheme", SIP_AUTHENTICATION_SCHEME, _V, _U),
    AvpDef("SIP-Authenticate", SIP_AUTHENTICATE, _V, _O),
    AvpDef("SIP-Authorization", SIP_AUTHORIZATION, _V, _O),
    AvpDef("SIP-Authentication-Context", SIP_AUTHENTICATION_CONTEXT, _V, _O),
    AvpDef("SIP-Auth-Data-Item", SIP_AUTH_DATA_ITEM, _V, _G),
    AvpDef("SIP-Item-Number", SIP_ITEM_NUMBER, _V, _N),
    AvpDef("Server-Assignment-Type", SERVER_ASSIGNMENT_TYPE, _V, _E),
    AvpDef("Deregistration-Reason", DEREGISTRATION_REASON, _V, _G),
    AvpDef("Reason-Code", REASON_CODE, _V, _E),
    AvpDef("Reason-Info", REASON_INFO, _V, _U),
    AvpDef("Charging-Information", CHARGING_INFORMATION, _V, _G),
    AvpDef("User-Authorization-Type", USER_AUTHORIZATION_TYPE, _V, _E),
    AvpDef("User-Data-Already-Available", USER_DATA_ALREADY_AVAILABLE, _V, _E),
    AvpDef("Confidentiality-Key", CONFIDENTIALITY_KEY, _V, _O),
    AvpDef("Integrity-Key", INTEGRITY_KEY, _V, _O),
    AvpDef("Supported-Features", SUPPORTED_FEATURES, _V, _G),
    AvpDef("Feature-List-ID", FEATURE_LIST_ID, _V, _N),
    AvpDef("Feature-List", FEATURE_LIST, _V, _N),
    AvpDef("Associated-Identities", ASSOCIATED_IDENTITIES, _V, _G),
    AvpDef("Originating-Request", ORIGINATING_REQUEST, _V, _E),
    AvpDef("SIP-Digest-Authenticate", SIP_DIGEST_AUTHENTICATE, _V, _G),
    AvpDef("Multiple-Registration-Indication", MULTIPLE_REGISTRATION_INDICATION, _V, _E),
    AvpDef("SAR-Flags", SAR_FLAGS, _V, _N),
)
#: (code, vendor) -> definition
AVPS: Final[dict[tuple[int, int], AvpDef]] = {(d.code, d.vendor): d for d in _DEFS}


def avp_name(code: int, vendor: int = 0) -> str:
    """The AVP's dictionary name, or ``AVP <code>/<vendor>`` when it is not in the dictionary."""
    found = AVPS.get((code, vendor))
    return found.name if found is not None else f"AVP {code}/{vendor}"


# -- values ----------------------------------------------------------------------------------------
NO_STATE_MAINTAINED: Final = 1  # Auth-Session-State (RFC 6733 §8.11)
# Result-Code (RFC 6733 §7.1)
SUCCESS: Final = 2001
COMMAND_UNSUPPORTED: Final = 3001
UNABLE_TO_DELIVER: Final = 3002
APPLICATION_UNSUPPORTED: Final = 3007
AUTHORIZATION_REJECTED: Final = 5003
MISSING_AVP: Final = 5005
NO_COMMON_APPLICATION: Final = 5010
UNABLE_TO_COMPLY: Final = 5012
# Experimental-Result-Code (TS 29.229 §6.2), with Vendor-Id 10415
FIRST_REGISTRATION: Final = 2001
SUBSEQUENT_REGISTRATION: Final = 2002
UNREGISTERED_SERVICE: Final = 2003
SUCCESS_SERVER_NAME_NOT_STORED: Final = 2004
ERROR_USER_UNKNOWN: Final = 5001
ERROR_IDENTITIES_DONT_MATCH: Final = 5002
ERROR_IDENTITY_NOT_REGISTERED: Final = 5003
ERROR_ROAMING_NOT_ALLOWED: Final = 5004
ERROR_IDENTITY_ALREADY_REGISTERED: Final = 5005
ERROR_AUTH_SCHEME_NOT_SUPPORTED: Final = 5006
ERROR_IN_ASSIGNMENT_TYPE: Final = 5007
ERROR_TOO_MUCH_DATA: Final = 5008
ERROR_NOT_SUPPORTED_USER_DATA: Final = 5009
# User-Authorization-Type (TS 29.229 §6.3.24)
UAT_REGISTRATION: Final = 0
UAT_DE_REGISTRATION: Final = 1
UAT_REGISTRATION_AND_CAPABILITIES: Final = 2
# Server-Assignment-Type (TS 29.229 §6.3.15)
NO_ASSIGNMENT: Final = 0
REGISTRATION: Final = 1
RE_REGISTRATION: Final = 2
UNREGISTERED_USER: Final = 3
TIMEOUT_DEREGISTRATION: Final = 4
USER_DEREGISTRATION: Final = 5
TIMEOUT_DEREGISTRATION_STORE_SERVER_NAME: Final = 6
USER_DEREGISTRATION_STORE_SERVER_NAME: Final = 7
ADMINISTRATIVE_DEREGISTRATION: Final = 8
AUTHENTICATION_FAILURE: Final = 9
AUTHENTICATION_TIMEOUT: Final = 10
DEREGISTRATION_TOO_MUCH_DATA: Final = 11
AAA_USER_DATA_REQUEST: Final = 12
# Reason-Code (TS 29.229 §6.3.17)
PERMANENT_TERMINATION: Final = 0
NEW_SERVER_ASSIGNED: Final = 1
SERVER_CHANGE: Final = 2
REMOVE_S_CSCF: Final = 3
# SIP-Authentication-Scheme values (TS 29.229 §6.3.9; "SIP Digest" for SIP-Digest-Authenticate)
SCHEME_AKAV1: Final = "Digest-AKAv1-MD5"
SCHEME_AKAV2: Final = "Digest-AKAv2-MD5"
SCHEME_SIP_DIGEST: Final = "SIP Digest"
SCHEME_UNKNOWN: Final = "Unknown"
