"""segstream: real-time, language-model-based user interest segmentation.

Data flow: ingest → profile → encode → segment → publish. This package (the repo's
``shared/`` folder) is the library the services share; ``segstream_services`` (the repo's
``services/`` folder) holds the deployable services and the ``segstream`` CLI.
"""

__version__ = "0.1.0"
