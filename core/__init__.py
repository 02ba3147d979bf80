"""The ground floor: settings, errors and the domain's plain types; imports nothing of pgclip."""
