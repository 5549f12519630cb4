-- depends: 0016.claim-by-kind
-- `text.enabled = false`: an available document's text is not fetched, and its state says so
-- ('off') rather than staying 'pending' for ever. `text rebuild` sets it pending again.
ALTER TABLE pdpj.documents DROP CONSTRAINT documents_text_status_check;
ALTER TABLE pdpj.documents ADD CONSTRAINT documents_text_status_check
    CHECK (text_status IN ('pending', 'available', 'no_text', 'failed', 'off'));
