"""Interoperability with other flow libraries (``normflows_sci.interop.nflows``)."""

__all__: list[str] = []
