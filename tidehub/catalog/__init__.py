"""The model catalog: endpoints loaded from data files, resolvable by Hub id, slug or upstream id."""

from tidehub.catalog.models import CAPABILITIES, Catalog, Endpoint, HubModel, load_catalog, upstream_payload

__all__ = ["CAPABILITIES", "Catalog", "Endpoint", "HubModel", "load_catalog", "upstream_payload"]
