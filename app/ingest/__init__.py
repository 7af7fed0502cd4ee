"""The one way in: validate producers' profiles and record the changes they ask for."""
