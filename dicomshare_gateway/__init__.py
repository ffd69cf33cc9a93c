"""``dicomshare gateway``: a DICOM C-STORE gateway a partner runs next to its PACS.

It receives instances over DICOM (PS3.7 C-STORE, C-ECHO; :mod:`dicomshare_gateway.scp`),
keeps each one in a local spool before answering success (:mod:`dicomshare_gateway.spool`)
and uploads it to the ingest bucket under the partner's prefix with the partner's role
(:mod:`dicomshare_gateway.uploader`). Configuration: :mod:`dicomshare_gateway.config`;
the operator's guide is docs/gateway.md.
"""
