"""ktrdr: trading research data layer; knows IB only through ExternalDataProvider."""
