"""The fleet controller: registry, scheduler, reconcile loops and the artifact server."""
