"""The confirmer process: publishes committed outcomes to the confirmation stream and to
the users' channels."""
