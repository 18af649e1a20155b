"""The router: which model serves a request, and where to go when it fails.

    features.py    what the router reads of a canonical request (sizes, needs, the classifier's text)
    classifier.py  the complexity classifier over MiniLM embeddings (weights in weights/complexity.npz)
    policy.py      ``choose``: the pure router (policies, size and capability rules, fallback chains,
                   load balancing) and its errors (RoutingError > NoCapableModel, NoHealthyModel)
    health.py      circuit breakers, latency averages and load windows per deployment
    sticky.py      the tier each conversation has reached
    train.py       builds the classifier from the routing pairs (``python -m routing.train``)

Nothing here imports the gateway beyond the shared canonical types (``gateway.types``); the step that
feeds it from a request is ``gateway/router.py``.
"""
