"""Login to the platform, in the hub process: local accounts or a Keycloak realm.

A package face that imports nothing, so that a light module of it (:mod:`.groups`, the
Keycloak group names that projects read) does not load the authenticators. The part:
:mod:`.part`; local accounts: :mod:`.local_accounts`, :mod:`.authenticator`, :mod:`.pages`;
Keycloak: :mod:`.realm`, :mod:`.keycloak`, :mod:`.token_exchange`, :mod:`.identities`.
"""
