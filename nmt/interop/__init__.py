"""Other toolkits' formats: export to CTranslate2, import of Marian/OPUS-MT models."""
