"""Runtime adapters: the `resolver-cni` chained CNI plugin and the `resolver-oci-hook` OCI hook.

Rule: every module here imports only the standard library (and `resolver.control.client`, which does
too), because a runtime starts these programs once per container and waits for them.
"""
