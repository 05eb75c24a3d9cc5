"""Wire-level types: requests, items, events and errors of the Responses API."""
